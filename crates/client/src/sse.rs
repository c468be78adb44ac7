//! A small incremental parser of `text/event-stream` (the WHATWG rules we need).

/// One dispatched server-sent event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// `event:` field; `message` when absent.
    pub event: String,
    pub data: String,
    /// `id:` field of this event, if it had one.
    pub id: Option<String>,
    /// `retry:` field (reconnect delay in ms), if sent with this event.
    pub retry_ms: Option<u64>,
}

/// Feed bytes in any chunking; take out complete events.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    event: Option<String>,
    data: Option<String>,
    id: Option<String>,
    retry_ms: Option<u64>,
}

impl SseParser {
    /// Add bytes and return the events they completed.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        let mut start = 0;
        while let Some(pos) = self.buf[start..].iter().position(|&b| b == b'\n') {
            let end = start + pos;
            let mut line = &self.buf[start..end];
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            let line = String::from_utf8_lossy(line).into_owned();
            start = end + 1;
            if let Some(ev) = self.line(&line) {
                out.push(ev);
            }
        }
        self.buf.drain(..start);
        out
    }

    fn line(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            let data = self.data.take();
            let event = self.event.take();
            let retry_ms = self.retry_ms.take();
            let id = self.id.take();
            return data.map(|data| SseEvent {
                event: event.unwrap_or_else(|| "message".to_owned()),
                data,
                id,
                retry_ms,
            });
        }
        if line.starts_with(':') {
            return None; // comment / keep-alive
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = Some(value.to_owned()),
            "data" => match self.data.as_mut() {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => self.data = Some(value.to_owned()),
            },
            "id" if !value.contains('\0') => self.id = Some(value.to_owned()),
            "retry" => self.retry_ms = value.parse().ok(),
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_across_chunk_boundaries() {
        let stream = b": keep-alive\n\nid: 1\nevent: status\ndata: {\"a\":\ndata: 1}\n\nid: 2\r\nevent: done\r\ndata: x\r\n\r\n";
        for split in 1..stream.len() {
            let mut p = SseParser::default();
            let mut evs = p.push(&stream[..split]);
            evs.extend(p.push(&stream[split..]));
            assert_eq!(evs.len(), 2, "split at {split}");
            assert_eq!(evs[0].event, "status");
            assert_eq!(evs[0].data, "{\"a\":\n1}");
            assert_eq!(evs[0].id.as_deref(), Some("1"));
            assert_eq!(evs[1].event, "done");
            assert_eq!(evs[1].data, "x");
        }
    }

    #[test]
    fn default_event_name_and_retry() {
        let mut p = SseParser::default();
        let evs = p.push(b"retry: 1500\ndata: hi\n\n");
        assert_eq!(evs[0].event, "message");
        assert_eq!(evs[0].retry_ms, Some(1500));
        assert!(p.push(b"event: x\n\n").is_empty(), "no data, no event");
    }
}
