//! Model files found and brought: each model file the workflow names is matched to the local file
//! (its size and SHA-256, cached by path and mtime), or to a URL of `"models"` in the config; the
//! Volume gets what it lacks.
//!
//! Uploads go through `modal volume put` before `modal deploy`. The Volume keeps a manifest of
//! what comfy-remote put there (`/.comfy-remote/models.json`: path -> size and SHA-256), and
//! `modal volume ls --json` says what the Volume really holds: a file the manifest lists with the
//! same size and hash, and the listing shows at that size, is not uploaded again; one the
//! listing lacks or shows at another size is. A URL source is fetched by the GPU container at its
//! first start ([`crate::fetch`]) and checked against its hash.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use comfy_remote_contract::models::ModelRef;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::{DeployConfig, VolumeConfig};
use crate::error::{DeployError, Result};
use crate::local::LocalComfy;
use crate::runner::{Runner, Sink};

/// Where the Volume's manifest of uploaded models lives on it.
pub const MANIFEST: &str = "/.comfy-remote/models.json";

/// Where one model file comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Origin {
    /// A file of the local ComfyUI, uploaded to the Volume.
    Local { path: PathBuf },
    /// A URL (plain, or a Hugging Face file) fetched onto the Volume at the first start.
    Url { url: String },
    /// Neither: expected on the Volume already (nothing local was given to look in).
    Volume,
}

/// One model file of the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelPlan {
    /// The models folder on the Volume (`checkpoints`, ...).
    pub folder: String,
    pub file: String,
    /// `<node id>:<input>` where the workflow names it.
    pub used_by: String,
    pub origin: Origin,
    pub size: Option<u64>,
    pub sha256: Option<String>,
}

impl ModelPlan {
    /// The file's path on the Volume, `/<folder>/<file>`.
    pub fn remote(&self) -> String {
        format!("/{}/{}", self.folder, self.file)
    }

    /// `<folder>/<file>`, the key of `"models"` and of the manifest.
    pub fn key(&self) -> String {
        format!("{}/{}", self.folder, self.file)
    }
}

/// The local file a model name resolves to in `dirs`.
fn find_in(dirs: &[PathBuf], file: &str) -> Option<PathBuf> {
    dirs.iter().map(|d| d.join(file)).find(|p| p.is_file())
}

/// Plan where each model file comes from. A file neither local nor in `"models"` stops the
/// deploy (when `check_models` is on and a local ComfyUI was given to look in).
pub fn plan(
    refs: &[ModelRef],
    local: &LocalComfy,
    config: &DeployConfig,
    cache: &Path,
) -> Result<Vec<ModelPlan>> {
    let mut out: Vec<ModelPlan> = Vec::new();
    let mut missing = Vec::new();
    for r in refs {
        if out
            .iter()
            .any(|p| p.file == r.file && r.folder.as_deref().map_or(true, |f| f == p.folder))
        {
            continue;
        }
        let configured = config.models.iter().find(|(key, _)| match &r.folder {
            Some(f) => **key == format!("{f}/{}", r.file),
            None => key.split_once('/').is_some_and(|(_, file)| file == r.file),
        });
        if let Some((key, source)) = configured {
            let (folder, file) = key.split_once('/').unwrap_or((key, ""));
            out.push(ModelPlan {
                folder: folder.to_owned(),
                file: file.to_owned(),
                used_by: r.used_by.clone(),
                origin: Origin::Url {
                    url: source.fetch_url(),
                },
                size: source.size,
                sha256: Some(source.sha256.to_ascii_lowercase()),
            });
            continue;
        }
        let found = match &r.folder {
            Some(f) => local
                .model_dirs
                .get(f)
                .and_then(|dirs| find_in(dirs, &r.file))
                .map(|p| (f.clone(), p)),
            None => local
                .model_dirs
                .iter()
                .find_map(|(f, dirs)| find_in(dirs, &r.file).map(|p| (f.clone(), p))),
        };
        match found {
            Some((folder, path)) => {
                let (size, sha256) = file_hash(&path, cache)?;
                out.push(ModelPlan {
                    folder,
                    file: r.file.clone(),
                    used_by: r.used_by.clone(),
                    origin: Origin::Local { path },
                    size: Some(size),
                    sha256: Some(sha256),
                });
            }
            None if r.folder.is_none() && local.model_dirs.is_empty() => {}
            None => {
                if local.model_dirs.is_empty() || !config.check_models {
                    out.push(ModelPlan {
                        folder: r.folder.clone().unwrap_or_default(),
                        file: r.file.clone(),
                        used_by: r.used_by.clone(),
                        origin: Origin::Volume,
                        size: None,
                        sha256: None,
                    });
                } else {
                    missing.push(format!("{} (node {})", r.display(), r.used_by));
                }
            }
        }
    }
    if !missing.is_empty() {
        return Err(DeployError::ModelsNotFound {
            files: missing,
            searched: local.describe_models(),
        });
    }
    Ok(out)
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
struct CachedHash {
    size: u64,
    mtime_ns: u128,
    sha256: String,
}

/// A file's size and SHA-256; the hash is cached (in `cache`/model-hashes.json) by path, size and
/// mtime, so an unchanged multi-gigabyte checkpoint is read once.
pub fn file_hash(path: &Path, cache: &Path) -> Result<(u64, String)> {
    let read_err = |source| DeployError::Read {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read_err)?;
    let mtime_ns = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let key = std::fs::canonicalize(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .to_string_lossy()
        .into_owned();
    let cache_path = cache.join("model-hashes.json");
    let mut cache: BTreeMap<String, CachedHash> = std::fs::read_to_string(&cache_path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    if let Some(c) = cache.get(&key) {
        if c.size == meta.len() && c.mtime_ns == mtime_ns {
            return Ok((c.size, c.sha256.clone()));
        }
    }
    let mut f = std::fs::File::open(path).map_err(read_err)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(read_err)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let sha256 = hex::encode(h.finalize());
    cache.insert(
        key,
        CachedHash {
            size: meta.len(),
            mtime_ns,
            sha256: sha256.clone(),
        },
    );
    // The cache only saves time: a failure to write it is not an error.
    if let Some(dir) = cache_path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Ok(text) = serde_json::to_string_pretty(&cache) {
        let _ = std::fs::write(&cache_path, text);
    }
    Ok((meta.len(), sha256))
}

/// Bytes a deploy uploads at most (the Volume may have some files already).
pub fn upload_bytes(plan: &[ModelPlan]) -> u64 {
    plan.iter()
        .filter(|m| matches!(m.origin, Origin::Local { .. }))
        .filter_map(|m| m.size)
        .sum()
}

/// Bytes the first start fetches from URLs at most, counting the files whose size the config
/// gives, and how many URL files it does not give a size for.
pub fn fetch_bytes(plan: &[ModelPlan]) -> (u64, usize) {
    plan.iter()
        .filter(|m| matches!(m.origin, Origin::Url { .. }))
        .fold((0, 0), |(bytes, unknown), m| match m.size {
            Some(n) => (bytes + n, unknown),
            None => (bytes, unknown + 1),
        })
}

/// A size as `modal volume ls --json` of Modal's 1.5 clients shows it (`15 B`, `1.2 GiB`; later
/// clients give the number of bytes).
fn modal_size(n: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = n as f64;
    for unit in UNITS {
        if v < 1024.0 {
            return if unit == "B" {
                format!("{n} B")
            } else {
                format!("{v:.1} {unit}")
            };
        }
        v /= 1024.0;
    }
    format!("{v:.1} ZiB")
}

/// Whether the size `modal volume ls --json` shows for a file is `size` bytes: exact when it
/// gives the number, at the precision it prints otherwise.
fn shown_size_is(shown: &Value, size: u64) -> bool {
    match shown {
        Value::Number(n) => n.as_u64() == Some(size),
        Value::String(s) => {
            let s = s.trim();
            s.parse::<u64>().ok() == Some(size) || s == modal_size(size)
        }
        _ => false,
    }
}

/// The files of the Volume in `dirs`, by path on the Volume (`/checkpoints/x.safetensors`) ->
/// the size `modal volume ls --json` shows. A directory it cannot list (none such yet, or
/// another failure, which is said) holds nothing: its files are uploaded.
fn volume_files(
    volume: &str,
    dirs: &std::collections::BTreeSet<String>,
    runner: &Runner,
    sink: Sink<'_>,
) -> Result<BTreeMap<String, Value>> {
    let mut out = BTreeMap::new();
    for dir in dirs {
        let got = runner.run_unchecked(
            &runner.modal(&["volume", "ls", "--json", volume, dir]),
            sink,
        )?;
        let entries: Option<Vec<Value>> = if got.code == 0 {
            serde_json::from_str(got.stdout.trim()).ok()
        } else {
            None
        };
        let Some(entries) = entries else {
            let why = got.message();
            let lower = why.to_ascii_lowercase();
            if got.code == 0 || !(lower.contains("not found") || lower.contains("no such file")) {
                sink(&format!(
                    "could not list {dir} on Volume {volume} ({}); its model files are uploaded",
                    if why.is_empty() {
                        "no JSON listing".to_owned()
                    } else {
                        why
                    }
                ));
            }
            continue;
        };
        for e in entries {
            let is_file = e
                .get("type")
                .and_then(Value::as_str)
                .map_or(true, |t| t == "file");
            let (Some(name), true) = (e.get("filename").and_then(Value::as_str), is_file) else {
                continue;
            };
            let size = e.get("size").cloned().unwrap_or(Value::Null);
            out.insert(format!("/{}", name.trim_start_matches('/')), size);
        }
    }
    Ok(out)
}

/// The directory of a path on the Volume (`/checkpoints/sub/x` -> `/checkpoints/sub`).
fn remote_dir(remote: &str) -> String {
    match remote.rsplit_once('/') {
        Some((dir, _)) if !dir.is_empty() => dir.to_owned(),
        _ => "/".to_owned(),
    }
}

/// `1.2 GiB`, `340 KiB`, `12 B`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// The manifest of the Volume: path on the Volume -> (size, SHA-256).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    pub files: BTreeMap<String, ManifestEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ManifestEntry {
    pub size: u64,
    pub sha256: String,
}

/// What [`sync_volume`] did.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct SyncReport {
    pub uploaded: Vec<String>,
    pub already_there: Vec<String>,
    /// Files the manifest listed that the Volume lacked or held at another size (uploaded again).
    pub stale: Vec<String>,
    pub bytes_uploaded: u64,
}

/// Give the Volume the local model files it lacks (`modal volume put`), keeping its manifest.
/// A file counts as there when the manifest lists it with the same size and hash and
/// `modal volume ls` shows it at that size.
pub fn sync_volume(
    plan: &[ModelPlan],
    volume: &VolumeConfig,
    work: &Path,
    runner: &Runner,
    sink: Sink<'_>,
) -> Result<SyncReport> {
    let local: Vec<&ModelPlan> = plan
        .iter()
        .filter(|m| matches!(m.origin, Origin::Local { .. }))
        .collect();
    let mut report = SyncReport::default();
    if local.is_empty() {
        return Ok(report);
    }
    if volume.create {
        // An existing Volume makes `create` fail; that is fine.
        let out = runner.run_unchecked(&runner.modal(&["volume", "create", &volume.name]), sink)?;
        let all = format!("{}{}", out.stdout, out.stderr);
        if out.code != 0 && !all.contains("already exists") {
            sink(&format!(
                "modal volume create {} failed; trying the uploads anyway",
                volume.name
            ));
        }
    }
    std::fs::create_dir_all(work).map_err(|source| DeployError::Write {
        path: work.to_path_buf(),
        source,
    })?;
    let manifest_path = work.join("volume-models.json");
    let _ = std::fs::remove_file(&manifest_path);
    let m = manifest_path.to_string_lossy().into_owned();
    let got = runner.run_unchecked(
        &runner.modal(&["volume", "get", "--force", &volume.name, MANIFEST, &m]),
        sink,
    )?;
    let mut manifest: Manifest = if got.code == 0 {
        std::fs::read_to_string(&manifest_path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default()
    } else {
        Manifest::default()
    };
    let dirs = local.iter().map(|m| remote_dir(&m.remote())).collect();
    let present = volume_files(&volume.name, &dirs, runner, sink)?;
    for model in local {
        let Origin::Local { path } = &model.origin else {
            continue;
        };
        let (Some(size), Some(sha256)) = (model.size, model.sha256.clone()) else {
            continue;
        };
        let remote = model.remote();
        let entry = ManifestEntry { size, sha256 };
        if manifest.files.get(&remote) == Some(&entry) {
            match present.get(&remote) {
                Some(shown) if shown_size_is(shown, size) => {
                    sink(&format!(
                        "model {} is on Volume {} already (same size and sha256): not uploaded",
                        model.key(),
                        volume.name
                    ));
                    report.already_there.push(remote);
                    continue;
                }
                Some(shown) => sink(&format!(
                    "model {}: Volume {} holds {remote} at {}, not {size} bytes: uploading it again",
                    model.key(),
                    volume.name,
                    match shown {
                        Value::String(s) => s.clone(),
                        other => format!("{other} bytes"),
                    }
                )),
                None => sink(&format!(
                    "model {}: the manifest of Volume {} lists {remote}, but the Volume lacks it: uploading it again",
                    model.key(),
                    volume.name
                )),
            }
            report.stale.push(remote.clone());
        }
        let p = path.to_string_lossy().into_owned();
        runner.run(
            &runner.modal(&["volume", "put", "--force", &volume.name, &p, &remote]),
            sink,
        )?;
        report.bytes_uploaded += size;
        report.uploaded.push(remote.clone());
        manifest.files.insert(remote, entry);
        // Written after each file, so an interrupted sync does not upload it again.
        write_manifest(&manifest, &manifest_path, volume, runner, sink)?;
    }
    Ok(report)
}

fn write_manifest(
    manifest: &Manifest,
    path: &Path,
    volume: &VolumeConfig,
    runner: &Runner,
    sink: Sink<'_>,
) -> Result<()> {
    let text = serde_json::to_string_pretty(manifest).unwrap_or_default();
    std::fs::write(path, text).map_err(|source| DeployError::Write {
        path: path.to_path_buf(),
        source,
    })?;
    let p = path.to_string_lossy().into_owned();
    runner.run(
        &runner.modal(&["volume", "put", "--force", &volume.name, &p, MANIFEST]),
        sink,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_read_like_a_person_writes_them() {
        assert_eq!(human_bytes(12), "12 B");
        assert_eq!(human_bytes(2048), "2.0 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }

    #[test]
    fn local_files_are_found_hashed_and_missing_ones_refused() {
        let tmp = tempfile::tempdir().expect("tmp");
        let ckpt = tmp.path().join("models").join("checkpoints");
        std::fs::create_dir_all(&ckpt).expect("mkdir");
        std::fs::write(ckpt.join("tiny.safetensors"), b"abc").expect("write");
        let local = LocalComfy::from_base(tmp.path());
        let refs = vec![
            ModelRef {
                folder: None,
                file: "tiny.safetensors".into(),
                used_by: "4:weights".into(),
            },
            ModelRef {
                folder: Some("checkpoints".into()),
                file: "tiny.safetensors".into(),
                used_by: "5:ckpt_name".into(),
            },
        ];
        let p = plan(&refs, &local, &DeployConfig::default(), tmp.path()).expect("plan");
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].remote(), "/checkpoints/tiny.safetensors");
        assert_eq!(p[0].size, Some(3));
        assert_eq!(
            p[0].sha256.as_deref(),
            Some("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        );
        let missing = vec![ModelRef {
            folder: Some("loras".into()),
            file: "nope.safetensors".into(),
            used_by: "7:lora_name".into(),
        }];
        let e = plan(&missing, &local, &DeployConfig::default(), tmp.path()).expect_err("missing");
        assert!(
            e.to_string()
                .contains("loras/nope.safetensors (node 7:lora_name)"),
            "{e}"
        );
    }

    #[test]
    fn sizes_compare_with_what_modal_volume_ls_shows_in_either_form() {
        assert_eq!(modal_size(15), "15 B");
        assert_eq!(modal_size(2048), "2.0 KiB");
        assert_eq!(modal_size(6_938_078_334), "6.5 GiB");
        assert!(shown_size_is(&Value::from(6_938_078_334u64), 6_938_078_334));
        assert!(!shown_size_is(
            &Value::from(6_938_078_333u64),
            6_938_078_334
        ));
        assert!(shown_size_is(&Value::from("6.5 GiB"), 6_938_078_334));
        assert!(!shown_size_is(&Value::from("3.2 GiB"), 6_938_078_334));
        assert!(shown_size_is(&Value::from("15 B"), 15));
        assert!(!shown_size_is(&Value::Null, 15));
        assert_eq!(
            remote_dir("/checkpoints/sub/x.safetensors"),
            "/checkpoints/sub"
        );
        assert_eq!(remote_dir("/x.safetensors"), "/");
    }

    /// `sync_volume` against the recording `modal` of tests/fake_modal, whose Volumes are
    /// directories: what `volume ls` answers is what is there.
    #[cfg(unix)]
    #[test]
    fn the_volume_is_asked_what_it_holds_and_a_manifest_that_lies_is_not_believed() {
        use std::os::unix::fs::PermissionsExt;

        let tmp = tempfile::tempdir().expect("tmp");
        let fake = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fake_modal/modal");
        let modal = tmp.path().join("modal");
        std::fs::write(
            &modal,
            format!(
                "#!/bin/sh\nFAKE_MODAL_LOG='{}' exec python3 '{}' \"$@\"\n",
                tmp.path().join("modal.log").display(),
                fake.display()
            ),
        )
        .expect("write");
        std::fs::set_permissions(&modal, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let runner = Runner {
            modal,
            python: None,
            uv: "uv".into(),
            git: "git".into(),
        };
        let ckpt = tmp.path().join("comfy/models/checkpoints");
        std::fs::create_dir_all(&ckpt).expect("mkdir");
        let file = ckpt.join("tiny.safetensors");
        std::fs::write(&file, b"weights").expect("write");
        let (size, sha256) = file_hash(&file, &tmp.path().join("cache")).expect("hash");
        let plan = vec![ModelPlan {
            folder: "checkpoints".into(),
            file: "tiny.safetensors".into(),
            used_by: "4:ckpt_name".into(),
            origin: Origin::Local { path: file.clone() },
            size: Some(size),
            sha256: Some(sha256),
        }];
        let volume = VolumeConfig {
            name: "models".into(),
            mount: "/models".into(),
            create: true,
        };
        let on_volume = tmp
            .path()
            .join("volumes/models/checkpoints/tiny.safetensors");
        let work = tmp.path().join("work");
        let mut lines = Vec::new();
        let sync = |lines: &mut Vec<String>| {
            lines.clear();
            sync_volume(&plan, &volume, &work, &runner, &mut |l: &str| {
                lines.push(l.to_owned())
            })
            .expect("sync")
        };
        let ls = format!(
            "$ {} volume ls --json models /checkpoints",
            runner.modal.display()
        );

        let first = sync(&mut lines);
        assert_eq!(first.uploaded, ["/checkpoints/tiny.safetensors"]);
        assert_eq!(std::fs::read(&on_volume).expect("uploaded"), b"weights");
        assert!(lines.contains(&ls), "{lines:?}");

        // The same file there at the same size, and in the manifest: skipped.
        let second = sync(&mut lines);
        assert!(second.uploaded.is_empty(), "{second:?}");
        assert_eq!(second.already_there, ["/checkpoints/tiny.safetensors"]);
        assert!(lines.contains(&ls), "{lines:?}");

        // The manifest lists it, but the Volume lacks it: uploaded again.
        std::fs::remove_file(&on_volume).expect("rm");
        let third = sync(&mut lines);
        assert_eq!(third.uploaded, ["/checkpoints/tiny.safetensors"]);
        assert_eq!(third.stale, ["/checkpoints/tiny.safetensors"]);
        assert!(
            lines.iter().any(|l| l.contains(
                "lists /checkpoints/tiny.safetensors, but the Volume lacks it: uploading it again"
            )),
            "{lines:?}"
        );
        assert_eq!(
            std::fs::read(&on_volume).expect("uploaded again"),
            b"weights"
        );

        // The Volume holds it at another size: uploaded again.
        std::fs::write(&on_volume, b"wei").expect("truncate");
        let fourth = sync(&mut lines);
        assert_eq!(fourth.stale, ["/checkpoints/tiny.safetensors"]);
        assert!(
            lines.iter().any(|l| l.contains(
                "holds /checkpoints/tiny.safetensors at 3 bytes, not 7 bytes: uploading it again"
            )),
            "{lines:?}"
        );
        assert_eq!(
            std::fs::read(&on_volume).expect("uploaded again"),
            b"weights"
        );
    }
}
