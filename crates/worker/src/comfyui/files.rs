//! ComfyUI's file routes: `/upload/image` (a job's input files, placed in
//! ComfyUI's input directory before its prompt is queued) and `/view` (the
//! files a prompt wrote, read back when it succeeds). A ComfyUI on this
//! machine with a known output directory (the one the worker starts, or
//! `--comfyui-output-dir`) has its outputs read from there: `/view` costs
//! ComfyUI's event loop about a millisecond a file, taken from the prompts
//! it runs meanwhile.

use std::path::{Component, Path, PathBuf};
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
        if let Some(path) = self
            .output_dir
            .as_deref()
            .filter(|_| kind == "output")
            .and_then(|root| inside(root, subfolder, filename))
        {
            match tokio::fs::read(&path).await {
                Ok(bytes) => return Ok(bytes.into()),
                // Not there (another directory than the one configured): ask ComfyUI.
                Err(e) => tracing::debug!(path = %path.display(), "reading an output here: {e}"),
            }
        }
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

/// `root/subfolder/filename`, when neither part leaves `root` (no parent,
/// root or drive components; the name is one component), as ComfyUI's
/// `/view` requires.
fn inside(root: &Path, subfolder: &str, filename: &str) -> Option<PathBuf> {
    let plain = |p: &Path| p.components().all(|c| matches!(c, Component::Normal(_)));
    let (sub, name) = (Path::new(subfolder), Path::new(filename));
    (plain(sub) && plain(name) && name.components().count() == 1).then(|| root.join(sub).join(name))
}

/// The output directory of a ComfyUI started in `dir` with `args` for
/// `main.py`: `--output-directory`, else `--base-directory`'s `output`,
/// else `dir/output`; relative paths are read against `dir`, where it runs.
pub(super) fn output_dir_of(dir: &Path, args: &[String]) -> PathBuf {
    let value = |flag: &str| {
        let mut found = None;
        let mut it = args.iter();
        while let Some(a) = it.next() {
            if a == flag {
                found = it.next().cloned();
            } else if let Some(v) = a.strip_prefix(flag).and_then(|r| r.strip_prefix('=')) {
                found = Some(v.to_owned());
            }
        }
        found.map(|v| dir.join(v))
    };
    value("--output-directory")
        .or_else(|| value("--base-directory").map(|b| b.join("output")))
        .unwrap_or_else(|| dir.join("output"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_output_directory_follows_comfyuis_flags_and_its_directory() {
        let dir = Path::new("/opt/comfyui");
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(output_dir_of(dir, &[]), dir.join("output"));
        assert_eq!(
            output_dir_of(dir, &args(&["--cpu", "--base-directory", "/srv/comfy"])),
            Path::new("/srv/comfy/output")
        );
        assert_eq!(
            output_dir_of(
                dir,
                &args(&["--base-directory=home", "--output-directory", "/out"])
            ),
            Path::new("/out")
        );
        assert_eq!(
            output_dir_of(dir, &args(&["--output-directory=renders"])),
            dir.join("renders")
        );
    }

    #[test]
    fn a_name_that_leaves_the_directory_is_not_read_here() {
        let root = Path::new("/out");
        assert_eq!(
            inside(root, "", "a_00001_.png"),
            Some(root.join("a_00001_.png"))
        );
        assert_eq!(
            inside(root, "runs/1", "a.png"),
            Some(root.join("runs/1/a.png"))
        );
        for (sub, name) in [
            ("..", "a.png"),
            ("", "../a.png"),
            ("/etc", "passwd"),
            ("", "/etc/passwd"),
            ("x", "y/z.png"),
            ("", ""),
        ] {
            assert_eq!(inside(root, sub, name), None, "{sub:?} {name:?}");
        }
    }
}
