//! Model files with a URL source, fetched onto the Volume by the GPU container at its first start
//! (`comfy_remote._native.fetch_models`, called by the generated app), each checked against the
//! SHA-256 of `"models"` in modal_config.json before it takes its place.
//!
//! A download goes to `<file>.part` and is renamed only when its hash matches, so an interrupted
//! or tampered download never looks like the model. The Volume records what was fetched in
//! `/.comfy-remote/fetched.json`: a later start checks the file is there and skips it.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{DeployError, Result};

/// The project file listing URL-sourced models (`build/models.json`).
pub const PLAN_FILE: &str = "build/models.json";
/// What the Volume has fetched, relative to its mount.
pub const FETCHED_FILE: &str = ".comfy-remote/fetched.json";

/// One model file to fetch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wanted {
    /// `<folder>/<file>` under the Volume's mount.
    pub path: String,
    pub url: String,
    pub sha256: String,
}

fn fail(file: &str, message: impl Into<String>) -> DeployError {
    DeployError::Fetch {
        file: file.to_owned(),
        message: message.into(),
    }
}

/// Fetch every file of `wanted` that `mount` lacks; returns the paths fetched.
pub fn fetch_all(
    wanted: &[Wanted],
    mount: &Path,
    log: &mut dyn FnMut(&str),
) -> Result<Vec<String>> {
    let record_path = mount.join(FETCHED_FILE);
    let mut record: BTreeMap<String, String> = std::fs::read_to_string(&record_path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let mut fetched = Vec::new();
    let client = reqwest::blocking::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(30))
        .build()
        .map_err(|e| fail("*", e.to_string()))?;
    for w in wanted {
        let dest = mount.join(&w.path);
        if dest.is_file()
            && record
                .get(&w.path)
                .is_some_and(|h| h.eq_ignore_ascii_case(&w.sha256))
        {
            continue;
        }
        log(&format!("fetching model {} from {}", w.path, w.url));
        fetch_one(&client, w, &dest)?;
        record.insert(w.path.clone(), w.sha256.to_ascii_lowercase());
        if let Some(dir) = record_path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| fail(&w.path, e.to_string()))?;
        }
        let text = serde_json::to_string_pretty(&record).unwrap_or_default();
        std::fs::write(&record_path, text).map_err(|e| fail(&w.path, e.to_string()))?;
        fetched.push(w.path.clone());
    }
    Ok(fetched)
}

fn fetch_one(client: &reqwest::blocking::Client, w: &Wanted, dest: &Path) -> Result<()> {
    let err = |m: String| fail(&w.path, m);
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| err(format!("cannot create {}: {e}", dir.display())))?;
    }
    let mut resp = client
        .get(&w.url)
        .send()
        .and_then(reqwest::blocking::Response::error_for_status)
        .map_err(|e| err(format!("GET {}: {e}", w.url)))?;
    let part = dest.with_extension(format!(
        "{}part",
        dest.extension()
            .map(|e| format!("{}.", e.to_string_lossy()))
            .unwrap_or_default()
    ));
    let mut out = std::fs::File::create(&part)
        .map_err(|e| err(format!("cannot write {}: {e}", part.display())))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = resp
            .read(&mut buf)
            .map_err(|e| err(format!("reading {}: {e}", w.url)))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        out.write_all(&buf[..n])
            .map_err(|e| err(format!("writing {}: {e}", part.display())))?;
    }
    drop(out);
    let got = hex::encode(h.finalize());
    if !got.eq_ignore_ascii_case(&w.sha256) {
        let _ = std::fs::remove_file(&part);
        return Err(err(format!(
            "{} has sha256 {got}, but modal_config.json says {}; the download was discarded",
            w.url, w.sha256
        )));
    }
    std::fs::rename(&part, dest).map_err(|e| err(format!("cannot move it into place: {e}")))
}

/// Read a plan file (`build/models.json`).
pub fn read_plan(path: &Path) -> Result<Vec<Wanted>> {
    let text = std::fs::read_to_string(path).map_err(|source| DeployError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| fail("*", format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::io::BufRead;
    use std::net::TcpListener;

    /// A local HTTP server answering every GET with `body` (one thread, until the test ends);
    /// returns its base URL and the request lines it was sent.
    fn serve(body: &'static [u8]) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = std::io::BufReader::new(stream.try_clone().expect("clone"));
                let mut first = String::new();
                let _ = reader.read_line(&mut first);
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                }
                if let Ok(mut l) = log.lock() {
                    l.push(first.trim_end().to_owned());
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(body);
            }
        });
        (format!("http://{addr}"), seen)
    }

    fn sha256_of(b: &[u8]) -> String {
        hex::encode(Sha256::digest(b))
    }

    /// The files under `dir`, relative, sorted.
    fn files(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if let Ok(rel) = p.strip_prefix(dir) {
                    out.push(rel.to_string_lossy().replace('\\', "/"));
                }
            }
        }
        out.sort();
        out
    }

    const BODY: &[u8] = b"tiny model weights\x00\x01\x02";

    #[test]
    fn a_served_file_lands_in_place_verified_and_recorded() {
        let (base, seen) = serve(BODY);
        let tmp = tempfile::tempdir().expect("tmp");
        let w = Wanted {
            path: "loras/tiny.safetensors".into(),
            url: format!("{base}/org/repo/resolve/main/tiny.safetensors"),
            sha256: sha256_of(BODY).to_ascii_uppercase(),
        };
        let mut logged = Vec::new();
        let fetched = fetch_all(std::slice::from_ref(&w), tmp.path(), &mut |l| {
            logged.push(l.to_owned())
        })
        .expect("fetched");
        assert_eq!(fetched, vec!["loras/tiny.safetensors".to_owned()]);
        assert_eq!(
            std::fs::read(tmp.path().join("loras/tiny.safetensors")).expect("read"),
            BODY
        );
        assert_eq!(
            files(tmp.path()),
            [".comfy-remote/fetched.json", "loras/tiny.safetensors"],
            "no .part left"
        );
        let record: BTreeMap<String, String> = serde_json::from_str(
            &std::fs::read_to_string(tmp.path().join(FETCHED_FILE)).expect("record"),
        )
        .expect("json");
        assert_eq!(record["loras/tiny.safetensors"], sha256_of(BODY));
        assert_eq!(
            seen.lock().expect("seen").as_slice(),
            ["GET /org/repo/resolve/main/tiny.safetensors HTTP/1.1"]
        );
        assert!(
            logged[0].starts_with("fetching model loras/tiny.safetensors from http://127.0.0.1:")
        );

        // A second start finds it recorded and there: nothing is fetched.
        assert!(fetch_all(&[w], tmp.path(), &mut |_| {})
            .expect("again")
            .is_empty());
        assert_eq!(seen.lock().expect("seen").len(), 1);
    }

    #[test]
    fn a_download_with_another_hash_is_refused_naming_both_and_nothing_is_left() {
        let (base, _) = serve(BODY);
        let tmp = tempfile::tempdir().expect("tmp");
        let expected = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let w = Wanted {
            path: "checkpoints/x.safetensors".into(),
            url: format!("{base}/x.safetensors"),
            sha256: expected.into(),
        };
        let e = fetch_all(&[w], tmp.path(), &mut |_| {}).expect_err("mismatch");
        assert!(matches!(e, DeployError::Fetch { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.starts_with("model checkpoints/x.safetensors: "),
            "{msg}"
        );
        assert!(
            msg.contains(&format!("has sha256 {}", sha256_of(BODY))),
            "names the hash it got: {msg}"
        );
        assert!(
            msg.contains(&format!("modal_config.json says {expected}")),
            "names the hash expected: {msg}"
        );
        assert!(msg.contains("the download was discarded"), "{msg}");
        assert_eq!(
            files(tmp.path()),
            Vec::<String>::new(),
            "neither the file, its .part nor a record is left"
        );
    }

    #[test]
    fn a_file_already_fetched_is_not_fetched_again_and_a_bad_url_fails_cleanly() {
        let tmp = tempfile::tempdir().expect("tmp");
        let w = Wanted {
            path: "checkpoints/x.safetensors".into(),
            url: "http://127.0.0.1:9/x.safetensors".into(),
            sha256: "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".into(),
        };
        let e = fetch_all(std::slice::from_ref(&w), tmp.path(), &mut |_| {})
            .expect_err("nothing listens");
        assert!(
            e.to_string()
                .starts_with("model checkpoints/x.safetensors: GET"),
            "{e}"
        );
        std::fs::create_dir_all(tmp.path().join("checkpoints")).expect("mkdir");
        std::fs::write(tmp.path().join("checkpoints/x.safetensors"), b"abc").expect("write");
        std::fs::create_dir_all(tmp.path().join(".comfy-remote")).expect("mkdir");
        std::fs::write(
            tmp.path().join(FETCHED_FILE),
            format!("{{\"checkpoints/x.safetensors\": \"{}\"}}", w.sha256),
        )
        .expect("write");
        let fetched = fetch_all(&[w], tmp.path(), &mut |_| {}).expect("skipped");
        assert!(fetched.is_empty());
    }
}
