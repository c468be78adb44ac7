//! Generated projects, pinned with insta snapshots (nonce and version filtered), and the checks that stop a scaffold.

use std::path::{Path, PathBuf};

use comfy_remote_deploy::config::{CustomNodePack, Gpu, InstallConfig, Source, VolumeConfig};
use comfy_remote_deploy::scaffold::{ProjectState, VERSION};
use comfy_remote_deploy::stacks::TorchChoice;
use comfy_remote_deploy::{DeployConfig, DeployError, Project, Runner, ScaffoldRequest};

/// The scaffold with the recording resolver of tests/fixtures/fake_uv (the real one runs in
/// tests/test_deploy.py).
fn scaffold(req: &ScaffoldRequest) -> Result<Project, DeployError> {
    let mut runner = Runner::from_env();
    runner.uv = fixtures().join("fake_uv");
    comfy_remote_deploy::scaffold(req, &runner, &mut |_| {})
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A zip with `files` (name, contents).
fn write_zip(path: &Path, files: &[(&str, &str)]) {
    use std::io::Write;
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).expect("create zip"));
    for (name, body) in files {
        zip.start_file(*name, zip::write::SimpleFileOptions::default())
            .expect("zip entry");
        zip.write_all(body.as_bytes()).expect("zip write");
    }
    zip.finish().expect("zip finish");
}

/// A minimal wheel: METADATA of this version and the native module (the generator only copies it).
fn wheel_at(path: &Path) -> PathBuf {
    let meta = format!("Metadata-Version: 2.4\nName: comfy-remote\nVersion: {VERSION}\n\nREADME\n");
    write_zip(
        path,
        &[
            (&format!("comfy_remote-{VERSION}.dist-info/METADATA"), &meta),
            ("comfy_remote/_native.abi3.so", "\x7fELF"),
            ("comfy_remote/__init__.py", ""),
        ],
    );
    path.to_path_buf()
}

const WHEEL_NAME: &str = "cp310-abi3-manylinux_2_17_x86_64.manylinux2014_x86_64.whl";

/// The package wheel, and the server's beside it (both are copied into the project).
fn fake_wheel(dir: &Path) -> PathBuf {
    let meta = format!("Metadata-Version: 2.4\nName: comfy-remote-server\nVersion: {VERSION}\n\n");
    write_zip(
        &dir.join(format!(
            "comfy_remote_server-{VERSION}-py3-none-manylinux_2_17_x86_64.whl"
        )),
        &[
            (
                &format!("comfy_remote_server-{VERSION}.dist-info/METADATA"),
                &meta,
            ),
            (
                &format!("comfy_remote_server-{VERSION}.data/scripts/comfy-remote-server"),
                "\x7fELF",
            ),
        ],
    );
    wheel_at(&dir.join(format!("comfy_remote-{VERSION}-{WHEEL_NAME}")))
}

fn request(tmp: &Path, workflow: &str, config: DeployConfig) -> ScaffoldRequest {
    ScaffoldRequest {
        workflow: fixtures().join(workflow),
        config,
        config_file: None,
        config_dir: fixtures(),
        out_dir: tmp.join("project"),
        wheel: Some(fake_wheel(tmp)),
        sdist: None,
        comfyui_dir: None,
        local: Default::default(),
        cache_dir: tmp.join("cache"),
        new_nonce: false,
        notes: Vec::new(),
    }
}

fn find_wheel(given: &Path) -> comfy_remote_deploy::Result<PathBuf> {
    use comfy_remote_deploy::wheels::{find, Dist, Format};
    find(Dist::Package, Format::Wheel, given)
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

macro_rules! snap {
    ($name:expr, $text:expr) => {
        insta::with_settings!({filters => vec![
            (r#"BUILD_NONCE = "[0-9a-f]{32}""#, r#"BUILD_NONCE = "[nonce]""#),
            (r"comfy_remote-\d+\.\d+\.\d+", "comfy_remote-[version]"),
            (r"comfy_remote_server-\d+\.\d+\.\d+", "comfy_remote_server-[version]"),
            (r"comfy-remote(-server)?==\d+\.\d+\.\d+", "comfy-remote$1==[version]"),
            (r"comfy-remote \d+\.\d+\.\d+", "comfy-remote [version]"),
        ]}, {
            insta::assert_snapshot!($name, $text);
        });
    };
}

#[test]
fn default_project_is_h100_with_the_default_stack() {
    let tmp = tempfile::tempdir().expect("tmp");
    let p = scaffold(&request(
        tmp.path(),
        "remote_invert.json",
        DeployConfig::default(),
    ))
    .expect("scaffold");
    assert_eq!(p.app_name, "comfy-remote-remote-invert");
    assert_eq!(p.stack_name, "torch-2.11");
    for f in [
        "workflow.py",
        "modal_config.json",
        "remote_invert.json",
        "utils/__init__.py",
        "build/constraints.txt",
        "build/check_stack.py",
        "build/get_url.py",
        "README.md",
    ] {
        assert!(p.dir.join(f).is_file(), "{f} missing");
    }
    let mut wheels: Vec<String> = p
        .dir
        .join("wheels")
        .read_dir()
        .expect("wheels")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    wheels.sort();
    assert_eq!(
        wheels,
        [
            format!("comfy_remote-{VERSION}-{WHEEL_NAME}"),
            format!("comfy_remote_server-{VERSION}-py3-none-manylinux_2_17_x86_64.whl"),
        ],
        "the package and the server, nothing else"
    );
    snap!("default_workflow_py", read(&p.dir.join("workflow.py")));
    snap!(
        "default_modal_config_json",
        read(&p.dir.join("modal_config.json"))
    );
    snap!(
        "default_constraints_txt",
        read(&p.dir.join("build/constraints.txt"))
    );
    snap!(
        "default_check_stack_py",
        read(&p.dir.join("build/check_stack.py"))
    );
    snap!("default_readme_md", read(&p.dir.join("README.md")));
}

#[test]
fn fallback_gpus_volume_snapshot_and_token() {
    let tmp = tempfile::tempdir().expect("tmp");
    let config = DeployConfig {
        app_name: "sdxl-service".into(),
        gpu: Gpu::Fallback(vec!["H100".into(), "A100-80GB".into()]),
        min_containers: 1,
        max_containers: Some(4),
        scaledown_window_s: 60,
        memory_snapshot: true,
        volume: Some(VolumeConfig {
            name: "comfy-models".into(),
            mount: "/models".into(),
            create: true,
        }),
        auth: comfy_remote_deploy::config::AuthConfig {
            proxy_auth: true,
            token_secret: Some("comfy-remote-token".into()),
        },
        ..Default::default()
    };
    let p = scaffold(&request(tmp.path(), "remote_models.json", config)).expect("scaffold");
    let files: Vec<_> = p.plan.models.iter().map(|m| m.key()).collect();
    assert_eq!(
        files,
        [
            "checkpoints/sd_xl_base_1.0.safetensors",
            "loras/detail.safetensors"
        ]
    );
    snap!("volume_workflow_py", read(&p.dir.join("workflow.py")));
    snap!(
        "volume_extra_model_paths_yaml",
        read(&p.dir.join("build/extra_model_paths.yaml"))
    );
    snap!("volume_readme_md", read(&p.dir.join("README.md")));
}

#[test]
fn seed_preset_extra_packages_and_custom_node_packs() {
    let tmp = tempfile::tempdir().expect("tmp");
    let config = DeployConfig {
        app_name: "custom".into(),
        gpu: Gpu::One("A10G".into()),
        torch: TorchChoice {
            stack: Some("seed-2.3".into()),
            ..Default::default()
        },
        pip: vec!["opencv-python-headless==4.10.0.84".into(), "einops".into()],
        apt: vec!["libsm6".into()],
        env: [("HF_HUB_DISABLE_TELEMETRY".to_string(), "1".to_string())].into(),
        custom_nodes: vec![
            CustomNodePack {
                name: None,
                path: Some("my_pack".into()),
                git: None,
                git_ref: None,
                nodes: vec![],
            },
            CustomNodePack {
                name: None,
                path: None,
                git: Some("https://github.com/example/comfy-git-pack.git".into()),
                git_ref: Some("v1.2.0".into()),
                nodes: vec!["GitPackNode".into()],
            },
        ],
        ..Default::default()
    };
    let p = scaffold(&request(tmp.path(), "remote_custom.json", config)).expect("scaffold");
    assert_eq!(p.nodes.resolved["MyPackSharpen"], "custom_nodes/my_pack");
    assert_eq!(
        p.nodes.resolved["GitPackNode"],
        "custom_nodes/comfy-git-pack"
    );
    assert!(p
        .dir
        .join("custom_nodes/my_pack/requirements.txt")
        .is_file());
    snap!("custom_workflow_py", read(&p.dir.join("workflow.py")));
    snap!(
        "custom_constraints_txt",
        read(&p.dir.join("build/constraints.txt"))
    );
}

#[test]
fn unresolved_node_types_stop_the_scaffold_with_the_list() {
    let tmp = tempfile::tempdir().expect("tmp");
    let err = scaffold(&request(
        tmp.path(),
        "remote_custom.json",
        DeployConfig::default(),
    ))
    .expect_err("missing");
    match &err {
        DeployError::UnresolvedNodes { missing, .. } => {
            assert_eq!(missing, &["GitPackNode", "MyPackSharpen"])
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("custom_nodes"), "{err}");
    assert!(
        !tmp.path().join("project").exists(),
        "nothing is written on a failed check"
    );
}

#[test]
fn ui_format_workflow_is_refused() {
    let tmp = tempfile::tempdir().expect("tmp");
    let err = scaffold(&request(
        tmp.path(),
        "ui_format.json",
        DeployConfig::default(),
    ))
    .expect_err("ui");
    assert!(err.to_string().contains("Export (API)"), "{err}");
}

#[test]
fn models_without_a_volume_are_refused() {
    let tmp = tempfile::tempdir().expect("tmp");
    let err = scaffold(&request(
        tmp.path(),
        "remote_models.json",
        DeployConfig::default(),
    ))
    .expect_err("no volume");
    assert!(
        err.to_string()
            .contains("checkpoints/sd_xl_base_1.0.safetensors"),
        "{err}"
    );
}

#[test]
fn incoherent_torch_override_is_refused_at_scaffold_time() {
    let tmp = tempfile::tempdir().expect("tmp");
    let config = DeployConfig {
        torch: TorchChoice {
            torch: Some("2.11.0".into()),
            torchvision: Some("0.18.0".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let err = scaffold(&request(tmp.path(), "remote_invert.json", config)).expect_err("incoherent");
    assert!(matches!(err, DeployError::TorchStack { .. }), "{err:?}");
    assert!(!tmp.path().join("project").exists());
}

#[test]
fn the_wheel_must_be_this_version_and_linux() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut req = request(tmp.path(), "remote_invert.json", DeployConfig::default());
    let old = tmp
        .path()
        .join("comfy_remote-0.0.1-cp310-abi3-manylinux_2_17_x86_64.whl");
    wheel_at(&old);
    req.wheel = Some(old);
    let err = scaffold(&req).expect_err("old wheel");
    assert!(err.to_string().contains("is version 0.0.1"), "{err}");
    let mac = tmp.path().join(format!(
        "comfy_remote-{VERSION}-cp310-abi3-macosx_11_0_arm64.whl"
    ));
    wheel_at(&mac);
    req.wheel = Some(mac);
    assert!(scaffold(&req)
        .expect_err("mac")
        .to_string()
        .contains("Linux x86_64"));
    req.wheel = Some(tmp.path().join("missing.whl"));
    assert!(scaffold(&req)
        .expect_err("missing")
        .to_string()
        .contains("COMFY_REMOTE_WHEEL"));
}

#[test]
fn unchanged_inputs_give_the_same_hash_and_nonce_and_force_changes_both() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut req = request(tmp.path(), "remote_invert.json", DeployConfig::default());
    let a = scaffold(&req).expect("first");
    let b = scaffold(&req).expect("second");
    assert_eq!(
        (a.nonce.clone(), a.content_hash.clone()),
        (b.nonce.clone(), b.content_hash.clone())
    );
    let state = ProjectState::load(&b.dir).expect("state");
    assert_eq!(state.content_hash, b.content_hash);
    req.new_nonce = true;
    let c = scaffold(&req).expect("forced");
    assert_ne!(c.nonce, b.nonce);
    assert_ne!(c.content_hash, b.content_hash);
    assert!(read(&c.dir.join("workflow.py")).contains(&c.nonce));
}

#[test]
fn a_directory_that_is_not_a_project_is_never_overwritten() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut req = request(tmp.path(), "remote_invert.json", DeployConfig::default());
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).expect("mkdir");
    std::fs::write(home.join("notes.txt"), b"mine").expect("write");
    req.out_dir = home;
    let err = scaffold(&req).expect_err("not a project");
    assert!(matches!(err, DeployError::NotAProjectOut { .. }), "{err:?}");
    assert!(
        err.to_string().starts_with(&format!(
            "refusing to write into {}: it exists and is not a comfy-remote project (no .comfy-remote/state.json); choose another --out",
            req.out_dir.display()
        )),
        "{err}"
    );
    // A modal_config.json of the user's does not make a directory a project:
    // the generator would overwrite README.md and replace utils/ there.
    std::fs::write(req.out_dir.join("modal_config.json"), b"{\"version\": 1}").expect("write");
    std::fs::create_dir_all(req.out_dir.join("utils")).expect("mkdir");
    std::fs::write(req.out_dir.join("utils/mine.py"), b"mine").expect("write");
    let err = scaffold(&req).expect_err("still not a project");
    assert!(matches!(err, DeployError::NotAProjectOut { .. }), "{err:?}");
    assert_eq!(read(&req.out_dir.join("utils/mine.py")), "mine");
}

#[test]
fn the_written_config_names_the_resolved_stack_and_reads_back_the_same() {
    let tmp = tempfile::tempdir().expect("tmp");
    let req = request(tmp.path(), "remote_invert.json", DeployConfig::default());
    let p = scaffold(&req).expect("scaffold");
    let written = p.dir.join("modal_config.json");
    let v: serde_json::Value = serde_json::from_str(&read(&written)).expect("json");
    assert_eq!(v["torch"]["stack"], "torch-2.11");
    let again = DeployConfig::load(&written).expect("reads back");
    assert_eq!(again, p.config);
}

#[test]
fn an_unknown_torch_stack_is_named_with_the_presets() {
    let tmp = tempfile::tempdir().expect("tmp");
    let config = DeployConfig {
        torch: TorchChoice {
            stack: Some("torch-9".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let err = scaffold(&request(tmp.path(), "remote_invert.json", config)).expect_err("unknown");
    let msg = err.to_string();
    assert!(
        msg.starts_with("unknown torch stack `torch-9`; presets: ") && msg.contains("torch-2.11"),
        "{msg}"
    );
}

#[test]
fn the_wheel_may_be_a_directory_or_a_glob_and_the_fitting_one_is_picked() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("wheels");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let good = fake_wheel(&dir);
    wheel_at(&dir.join(format!("comfy_remote-0.0.1-{WHEEL_NAME}")));
    wheel_at(&dir.join(format!(
        "comfy_remote-{VERSION}-cp310-abi3-macosx_11_0_arm64.whl"
    )));
    let found = find_wheel(&dir).expect("directory");
    assert_eq!(found, good);
    let glob = dir.join("comfy_remote-*.whl");
    let found = find_wheel(&glob).expect("glob");
    assert_eq!(found, good);
    let err = find_wheel(&dir.join("nothing-*.whl"))
        .expect_err("no match")
        .to_string();
    assert!(err.contains("no file matches"), "{err}");
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).expect("mkdir");
    wheel_at(&empty.join(format!("comfy_remote-0.0.1-{WHEEL_NAME}")));
    let err = find_wheel(&empty)
        .expect_err("no fitting wheel")
        .to_string();
    assert!(
        err.contains("holds no comfy_remote") && err.contains("0.0.1"),
        "{err}"
    );
}

#[test]
fn a_file_named_like_a_wheel_must_be_one() {
    let tmp = tempfile::tempdir().expect("tmp");
    let name = format!("comfy_remote-{VERSION}-{WHEEL_NAME}");
    let junk = tmp.path().join(&name);
    std::fs::write(&junk, b"wheel").expect("write");
    let find = |p: &Path| find_wheel(p).expect_err("refused").to_string();
    let err = find(&junk);
    assert!(err.contains(&name) && err.contains("not a zip"), "{err}");
    write_zip(&junk, &[("comfy_remote/_native.abi3.so", "")]);
    assert!(find(&junk).contains("METADATA"));
    write_zip(
        &junk,
        &[
            (
                "other-1.0.dist-info/METADATA",
                "Name: other\nVersion: 1.0\n",
            ),
            ("comfy_remote/_native.abi3.so", ""),
        ],
    );
    assert!(find(&junk).contains("\"other\""));
    write_zip(
        &junk,
        &[
            (
                "comfy_remote-0.0.1.dist-info/METADATA",
                "Name: comfy_remote\nVersion: 0.0.1\n",
            ),
            ("comfy_remote/_native.abi3.so", ""),
        ],
    );
    assert!(find(&junk).contains("0.0.1"));
    let meta = format!("Name: comfy_remote\nVersion: {VERSION}\n");
    write_zip(
        &junk,
        &[(&format!("comfy_remote-{VERSION}.dist-info/METADATA"), &meta)],
    );
    assert!(find(&junk).contains("_native"));
}

#[test]
fn the_project_holds_the_lock_without_the_torch_index_wheels_and_a_conflict_stops_it() {
    let tmp = tempfile::tempdir().expect("tmp");
    let p = scaffold(&request(
        tmp.path(),
        "remote_invert.json",
        DeployConfig::default(),
    ))
    .expect("scaffold");
    let lock = read(&p.dir.join("build/requirements.lock"));
    assert!(
        lock.contains("numpy==1.26.4 \\\n    --hash=sha256:"),
        "{lock}"
    );
    assert!(
        !lock
            .lines()
            .any(|l| l.starts_with("torch==") || l.starts_with("nvidia-")),
        "{lock}"
    );
    let app = read(&p.dir.join("workflow.py"));
    assert!(
        app.contains("--require-hashes -r \" + LOCK"),
        "the image installs from the lock"
    );
    assert_eq!(p.plan.locked_packages, 1);

    let tmp = tempfile::tempdir().expect("tmp");
    let config = DeployConfig {
        pip: vec!["conflict==1".into()],
        ..Default::default()
    };
    let err = scaffold(&request(tmp.path(), "remote_invert.json", config)).expect_err("conflict");
    let msg = err.to_string();
    assert!(matches!(err, DeployError::Unresolvable { .. }), "{msg}");
    assert!(msg.contains("Because you require conflict==1"), "{msg}");
    assert!(
        !tmp.path().join("project").exists(),
        "nothing generated on a conflict"
    );
}

/// The files of a project directory under `dir` (empty when there is none).
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn with_source(source: Source) -> DeployConfig {
    DeployConfig {
        comfy_remote: InstallConfig {
            source,
            index_url: None,
        },
        ..Default::default()
    }
}

#[test]
fn from_the_registry_the_images_install_this_version_and_carry_no_wheel() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut req = request(
        tmp.path(),
        "remote_invert.json",
        with_source(Source::Registry),
    );
    req.wheel = None;
    let p = scaffold(&req).expect("scaffold");
    assert_eq!(p.install.source, Source::Registry);
    assert_eq!(p.wheel, None);
    let py = read(&p.dir.join("workflow.py"));
    assert!(
        py.contains(&format!(
            "COMFY_REMOTE_GPU = \"comfy-remote=={VERSION} comfy-remote-server=={VERSION}\""
        )),
        "{py}"
    );
    assert!(py.contains(&format!("COMFY_REMOTE_WEB = \"comfy-remote=={VERSION}\"")));
    assert!(!py.contains("add_local_file(HERE / \"wheels"));
    assert!(listing(&p.dir.join("wheels")).is_empty());
    let cfg: serde_json::Value =
        serde_json::from_str(&read(&p.dir.join("modal_config.json"))).expect("json");
    assert_eq!(cfg["comfy_remote"]["source"], "registry");
    snap!("registry_workflow_py", py);
}

#[test]
fn from_sdists_a_build_stage_with_rust_builds_them_in_the_image() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dist = tmp.path().join("dist");
    std::fs::create_dir_all(&dist).expect("mkdir");
    for name in ["comfy_remote", "comfy_remote_server"] {
        std::fs::write(
            dist.join(format!("{name}-{VERSION}.tar.gz")),
            [0x1f, 0x8b, 8, 0],
        )
        .expect("write");
    }
    std::fs::write(dist.join("comfy_remote-0.0.1.tar.gz"), [0x1f, 0x8b, 8, 0]).expect("write");
    let mut req = request(tmp.path(), "remote_invert.json", DeployConfig::default());
    req.wheel = None;
    req.sdist = Some(dist.clone());
    let p = scaffold(&req).expect("scaffold");
    assert_eq!(p.install.source, Source::Sdist);
    assert_eq!(
        listing(&p.dir.join("sdist")),
        [
            format!("comfy_remote-{VERSION}.tar.gz"),
            format!("comfy_remote_server-{VERSION}.tar.gz")
        ]
    );
    let py = read(&p.dir.join("workflow.py"));
    assert!(
        py.contains("build_from_sdist(PIP + \" \" + COMFY_REMOTE_GPU)"),
        "{py}"
    );
    assert!(
        py.contains(".apt_install(\"curl\")"),
        "the web image fetches rustup too"
    );
    snap!("sdist_workflow_py", py);

    // Without files, the registry's sdists of this version.
    let mut req = request(tmp.path(), "remote_invert.json", with_source(Source::Sdist));
    req.wheel = None;
    let py = read(&scaffold(&req).expect("scaffold").dir.join("workflow.py"));
    assert!(py.contains(&format!(
        "COMFY_REMOTE_GPU = \"--no-binary comfy-remote,comfy-remote-server comfy-remote=={VERSION} comfy-remote-server=={VERSION}\""
    )), "{py}");

    // Junk named like an sdist is refused by name.
    std::fs::write(dist.join(format!("comfy_remote-{VERSION}.tar.gz")), b"junk").expect("write");
    req.sdist = Some(dist);
    let err = scaffold(&req).expect_err("junk").to_string();
    assert!(err.contains("not a gzip archive"), "{err}");
}

#[test]
fn a_wheel_url_is_fetched_by_pip_with_the_server_wheel_beside_it() {
    let tmp = tempfile::tempdir().expect("tmp");
    let mut req = request(tmp.path(), "remote_invert.json", DeployConfig::default());
    let base = format!("https://example.com/releases/download/v{VERSION}");
    req.wheel = Some(PathBuf::from(format!(
        "{base}/comfy_remote-{VERSION}-cp310-abi3-manylinux_2_28_x86_64.whl"
    )));
    let p = scaffold(&req).expect("scaffold");
    assert_eq!(p.install.source, Source::Wheel);
    assert_eq!(p.wheel, None, "nothing is copied");
    assert!(listing(&p.dir.join("wheels")).is_empty());
    let py = read(&p.dir.join("workflow.py"));
    assert!(py.contains(&format!(
        "COMFY_REMOTE_GPU = \"{base}/comfy_remote-{VERSION}-cp310-abi3-manylinux_2_28_x86_64.whl {base}/comfy_remote_server-{VERSION}-py3-none-manylinux_2_28_x86_64.whl\""
    )), "{py}");
}

#[test]
fn the_package_requirements_locked_without_a_local_wheel_are_the_pyprojects() {
    let pyproject = read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../pyproject.toml"));
    let line = pyproject
        .lines()
        .find_map(|l| l.strip_prefix("dependencies = "))
        .expect("pyproject.toml lists dependencies on one line");
    let listed: Vec<String> = serde_json::from_str(line).expect("a list of strings");
    assert_eq!(listed, comfy_remote_deploy::plan::PACKAGE_REQUIRES);
}
