//! The frontend's text replacements (`applyTextReplacements`) in output file names:
//! `%Node.widget%` (a node found by its "Node name for S&R" property, else its title) and
//! `%date:yyyy-MM-dd%`.
//!
//! Dates are the conversion's (UTC), where the frontend uses the local time of each queue.

use serde_json::Value;

use super::configure::ConfGraph;

/// The `Node name for S&R` property the frontend gives every node but save nodes.
const SR_PROPERTY: &str = "Node name for S&R";

fn widget_text(graphs: &[&ConfGraph], node: &str, widget: &str) -> Option<String> {
    let nodes = || graphs.iter().flat_map(|g| g.nodes.iter());
    let by_property = nodes().find(|n| {
        n.properties.get(SR_PROPERTY).and_then(Value::as_str) == Some(node)
            || (!n.properties.contains_key(SR_PROPERTY)
                && !super::configure::is_save_node(&n.ty)
                && n.ty == node)
    });
    let found = by_property.or_else(|| nodes().find(|n| n.title == node))?;
    let w = found.widgets.iter().find(|w| w.name == widget)?;
    let text = match &w.value {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Number(n)) => n.to_string(),
        Some(other) => other.to_string(),
    };
    Some(
        text.chars()
            .map(|c| {
                if "/?<>\\:*|\"".contains(c) || (c as u32) < 0x20 || c as u32 == 0x7f {
                    '_'
                } else {
                    c
                }
            })
            .collect(),
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// `formatDate`: `yyyy`, `yy`, and `d`/`M`/`h`/`m`/`s` (doubled: zero-padded).
fn format_date(fmt: &str, secs: i64) -> String {
    let (y, mo, d) = civil(secs.div_euclid(86_400));
    let t = secs.rem_euclid(86_400);
    let part = |c: char| -> Option<i64> {
        Some(match c {
            'd' => i64::from(d),
            'M' => i64::from(mo),
            'h' => t / 3600,
            'm' => t / 60 % 60,
            's' => t % 60,
            _ => return None,
        })
    };
    let chars: Vec<char> = fmt.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == 'y' {
            let n = chars[i..].iter().take_while(|&&x| x == 'y').count().min(4);
            if n >= 2 {
                let n = if n == 3 { 3 } else { n };
                out.push_str(&match n {
                    2 => format!("{:02}", y.rem_euclid(100)),
                    4 => y.to_string(),
                    _ => "yyy".to_owned(),
                });
                i += n;
                continue;
            }
        } else if let Some(v) = part(c) {
            let n = if chars.get(i + 1) == Some(&c) { 2 } else { 1 };
            out.push_str(&format!("{v:0n$}"));
            i += n;
            continue;
        }
        out.push(c);
        i += 1;
    }
    out
}

/// `applyTextReplacements` over every node of `graphs`.
pub fn apply(graphs: &[&ConfGraph], value: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0));
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find('%') {
        let after = &rest[start + 1..];
        match after.find('%') {
            Some(0) => {
                // `%%`: no pattern starts here; the second `%` may start one.
                out.push_str(&rest[..start + 1]);
                rest = after;
            }
            Some(end) => {
                let text = &after[..end];
                out.push_str(&rest[..start]);
                let parts: Vec<&str> = text.split('.').collect();
                let replaced = match parts.as_slice() {
                    [node, widget] => widget_text(graphs, node, widget),
                    [one] if one.starts_with("date:") => Some(format_date(&one[5..], now)),
                    _ => None,
                };
                match replaced {
                    Some(r) => out.push_str(&r),
                    None => {
                        out.push('%');
                        out.push_str(text);
                        out.push('%');
                    }
                }
                rest = &after[end + 1..];
            }
            None => break,
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_format_like_the_frontend() {
        // 2024-03-05 07:08:09 UTC
        let t = 1_709_622_489;
        assert_eq!(format_date("yyyy-MM-dd", t), "2024-03-05");
        assert_eq!(format_date("yy/M/d hh:mm:ss", t), "24/3/5 07:08:09");
    }

    #[test]
    fn unknown_patterns_stay() {
        assert_eq!(apply(&[], "ComfyUI_%width%_%a.b%"), "ComfyUI_%width%_%a.b%");
        assert_eq!(apply(&[], "100%% sure"), "100%% sure");
    }
}
