//! ComfyUI's file routes: `/upload/image` (a job's input files, placed in
//! ComfyUI's input directory before its prompt is queued) and `/view` (the
//! files a prompt wrote, read back when it succeeds).

use std::time::Duration;

use serde_json::Value;

use super::ComfyClient;
use crate::error::WorkerError;

impl ComfyClient {
    /// Put `bytes` into ComfyUI's input directory as `subfolder/filename`
    /// (replacing a file of that name); the name a prompt refers to it by.
    pub async fn upload_input(
        &self,
        subfolder: &str,
        filename: &str,
        bytes: Vec<u8>,
    ) -> Result<String, WorkerError> {
        let boundary = format!("comfy-remote-{}", uuid::Uuid::new_v4().simple());
        let field = |name: &str, value: &str| {
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n")
        };
        let mut body = Vec::with_capacity(bytes.len() + 512);
        body.extend_from_slice(field("type", "input").as_bytes());
        body.extend_from_slice(field("subfolder", subfolder).as_bytes());
        body.extend_from_slice(field("overwrite", "true").as_bytes());
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{filename}\"\r\n\
                 Content-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(&bytes);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let r = self
            .http
            .post(self.url("/upload/image"))
            .header(
                reqwest::header::CONTENT_TYPE,
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(body)
            .timeout(Duration::from_secs(300))
            .send()
            .await
            .map_err(|e| WorkerError::Comfy(format!("POST /upload/image: {e}")))?;
        if !r.status().is_success() {
            return Err(WorkerError::Comfy(format!(
                "POST /upload/image returned {}",
                r.status()
            )));
        }
        let v: Value = r
            .json()
            .await
            .map_err(|e| WorkerError::Comfy(format!("POST /upload/image: {e}")))?;
        let name = v.get("name").and_then(Value::as_str).unwrap_or(filename);
        let sub = v
            .get("subfolder")
            .and_then(Value::as_str)
            .unwrap_or(subfolder);
        Ok(if sub.is_empty() {
            name.to_owned()
        } else {
            format!("{sub}/{name}")
        })
    }

    /// The size of `subfolder/filename` in ComfyUI's input directory, or
    /// `None` when ComfyUI has no such file (or does not say).
    pub async fn input_size(&self, subfolder: &str, filename: &str) -> Option<u64> {
        let r = self
            .http
            .head(self.url("/view"))
            .query(&[
                ("filename", filename),
                ("subfolder", subfolder),
                ("type", "input"),
            ])
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .ok()?;
        if !r.status().is_success() {
            return None;
        }
        r.headers()
            .get(reqwest::header::CONTENT_LENGTH)?
            .to_str()
            .ok()?
            .parse()
            .ok()
    }

    /// The bytes of a file ComfyUI serves (`type`: output, temp or input).
    pub async fn view(
        &self,
        filename: &str,
        subfolder: &str,
        kind: &str,
    ) -> Result<bytes::Bytes, WorkerError> {
        let r = self
            .http
            .get(self.url("/view"))
            .query(&[
                ("filename", filename),
                ("subfolder", subfolder),
                ("type", kind),
            ])
            .timeout(Duration::from_secs(300))
            .send()
            .await
            .map_err(|e| WorkerError::Comfy(format!("GET /view: {e}")))?;
        if !r.status().is_success() {
            return Err(WorkerError::Comfy(format!(
                "GET /view {filename:?} returned {}",
                r.status()
            )));
        }
        r.bytes()
            .await
            .map_err(|e| WorkerError::Comfy(format!("GET /view: {e}")))
    }
}
