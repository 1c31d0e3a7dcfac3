//! The container image (docker/Dockerfile), run with podman by
//! `scripts/image-test.sh`, which builds it (`scripts/image.sh`) and passes
//! its reference in `SECRETGATE_IMAGE` and its PostgreSQL major in
//! `SECRETGATE_IMAGE_MAJOR`. Not part of a plain `cargo test` (`test = false`):
//! it runs containers.
//!
//! The walk, every container on the host's network on a private port, the
//! client on the host (values are bind parameters):
//! 1. a first start on an empty volume with the keyring as a podman secret,
//!    the password as another and `wal_level=logical` as docker/compose.yaml
//!    has it: the init script made the extension in POSTGRES_DB, the library
//!    is preloaded, the setting kept, compose's healthcheck passes;
//!    `secretgate migrate run`; secrets stored; the tour; a refusal per gate
//!    by SQLSTATE;
//! 2. a new container on the same volume and secret: the secrets read back;
//! 3. the keyring from `SECRETGATE_KEYRING_COMMAND`, reading a root-owned
//!    file its group may read (a Kubernetes Secret with an fsGroup): the
//!    secrets read back;
//! 4. another keyring, bind-mounted as the secret's file: SG004 on read;
//! 5. a data folder made by the base image (the official one, or its
//!    stand-in) with the server's own preload list: the image started on it
//!    adds secretgate to that list, and `secretgate migrate run` creates the
//!    extension there;
//! 6. no keyring: the container exits at once with the documented line, and
//!    the server never starts;
//! 7. no key and no stored value in `podman logs` or `podman inspect` of any
//!    of them, nor of the image.

use anyhow::{bail, ensure, Context, Result};
use secretgate_core::Code;
use secretgate_tests::*;
use sqlx::postgres::PgConnection;
use sqlx::Connection;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use uuid::Uuid;

/// Rootful podman with runc and cgroupfs, and host networking: what works in
/// nested containers and on hosts without systemd (as scripts/image.sh).
const PODMAN: &[&str] = &["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs"];
const RUN_FLAGS: &[&str] = &["--network", "host", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"];
/// The owner of the server's files in the official image.
const SERVER_UID: u32 = 999;
/// The line the entrypoint logs when the keyring secret is missing (docs/containers.md).
const NO_KEYRING: &str = "secretgate: no keyring at /run/secrets/secretgate_keyring: mount the keyring file there \
                          as a secret (or set SECRETGATE_KEYRING_FILE or SECRETGATE_KEYRING_COMMAND); not starting";

fn podman(args: &[&str]) -> Result<String> {
    let out = Command::new(PODMAN[0]).args(&PODMAN[1..]).args(args).output().context("run podman")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "podman {} failed ({}): {}{}",
        args.first().unwrap_or(&""),
        out.status,
        text,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(text)
}

/// Everything the walk made, removed when it ends.
struct Walk {
    image: String,
    major: u32,
    suffix: String,
    port: u16,
    dir: PathBuf,
    /// The image's volume (its data folder's parent, or the folder itself).
    volume_path: String,
    containers: Vec<String>,
    /// The volumes made, the first one the walk's own.
    volumes: Vec<String>,
    password: String,
    /// Every value stored, and every key: none may appear in logs or inspect output.
    needles: Vec<String>,
}

impl Walk {
    fn volume(&self) -> String {
        self.volumes[0].clone()
    }
    fn new_volume(&mut self, what: &str) -> Result<String> {
        let name = format!("secretgate-test-{what}-{}", self.suffix);
        podman(&["volume", "create", &name])?;
        self.volumes.push(name.clone());
        Ok(name)
    }
    fn secret(&self, what: &str) -> String {
        format!("secretgate-test-{what}-{}", self.suffix)
    }
    fn url(&self, db: &str) -> String {
        format!("postgres://postgres:{}@127.0.0.1:{}/{db}", self.password, self.port)
    }

    /// Starts a container of the image on the walk's volume: see [`Walk::start_on`].
    fn start(&mut self, name: &str, extra: &[&str], settings: &[&str]) -> Result<String> {
        let (image, volume) = (self.image.clone(), self.volume());
        self.start_on(name, &image, &volume, extra, settings)
    }

    /// Starts a container of `image` (detached) on `volume`, with `extra`
    /// options before the image, and the server listening on loopback only
    /// with `settings` (`-c`).
    fn start_on(&mut self, name: &str, image: &str, volume: &str, extra: &[&str], settings: &[&str]) -> Result<String> {
        let name = format!("secretgate-test-{name}-{}", self.suffix);
        let port = self.port.to_string();
        let pgport = format!("PGPORT={port}");
        let volume = format!("{volume}:{}", self.volume_path);
        let mut args = vec!["run", "-d", "--name", &name];
        args.extend_from_slice(RUN_FLAGS);
        let password = format!("{},target=postgres_password", self.secret("password"));
        args.extend_from_slice(&[
            "-e",
            &pgport,
            "-e",
            "POSTGRES_DB=platform",
            "-e",
            "POSTGRES_PASSWORD_FILE=/run/secrets/postgres_password",
            "--secret",
            &password,
            "-v",
            &volume,
        ]);
        args.extend_from_slice(extra);
        args.extend_from_slice(&[image, "-c", "listen_addresses=127.0.0.1"]);
        for setting in settings {
            args.extend_from_slice(&["-c", setting]);
        }
        self.containers.push(name.clone());
        podman(&args)?;
        Ok(name)
    }

    /// Waits until the server in `name` accepts connections to `db`.
    async fn connect(&self, name: &str, db: &str) -> Result<PgConnection> {
        let deadline = std::time::Instant::now() + Duration::from_secs(180);
        loop {
            if let Ok(conn) = PgConnection::connect(&self.url(db)).await {
                return Ok(conn);
            }
            let state = podman(&["inspect", "--format", "{{.State.Status}}", name])?;
            if state.trim() == "exited" || std::time::Instant::now() > deadline {
                bail!("{name} did not accept connections ({}):\n{}", state.trim(), self.logs(name));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    fn stop(&self, name: &str) -> Result<()> {
        podman(&["stop", "-t", "60", name]).map(drop)
    }

    fn logs(&self, name: &str) -> String {
        let out = Command::new(PODMAN[0]).args(&PODMAN[1..]).args(["logs", name]).output();
        out.map(|o| format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
            .unwrap_or_default()
    }

    /// A keyring file on the host, owned by `uid:gid` with `mode`, to bind-mount.
    fn keyring_file(&self, name: &str, keys: &TestKeys, uid: u32, gid: u32, mode: u32) -> Result<PathBuf> {
        let path = self.dir.join(name);
        std::fs::write(&path, keys.to_json())?;
        std::os::unix::fs::chown(&path, Some(uid), Some(gid))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
        Ok(path)
    }
}

impl Drop for Walk {
    fn drop(&mut self) {
        for name in &self.containers {
            let _ = Command::new(PODMAN[0]).args(&PODMAN[1..]).args(["rm", "-f", "-t", "5", name]).output();
        }
        for volume in &self.volumes {
            let _ = Command::new(PODMAN[0]).args(&PODMAN[1..]).args(["volume", "rm", "-f", volume]).output();
        }
        for what in ["keyring", "password"] {
            let _ = Command::new(PODMAN[0]).args(&PODMAN[1..]).args(["secret", "rm", &self.secret(what)]).output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("bind a loopback port")?;
    Ok(listener.local_addr()?.port())
}

fn main() {
    let (Some(image), Some(major)) = (std::env::var_os("SECRETGATE_IMAGE"), std::env::var_os("SECRETGATE_IMAGE_MAJOR"))
    else {
        eprintln!("image: SECRETGATE_IMAGE and SECRETGATE_IMAGE_MAJOR are not set: run scripts/image-test.sh");
        std::process::exit(2);
    };
    let image = image.to_string_lossy().into_owned();
    let major: u32 = major.to_string_lossy().parse().expect("SECRETGATE_IMAGE_MAJOR is a number");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    match runtime.block_on(walk(image.clone(), major)) {
        Ok(()) => println!("image: the container walk passed on {image}"),
        Err(e) => {
            eprintln!("image: FAILED on {image}: {e:#}");
            std::process::exit(1);
        }
    }
}

async fn walk(image: String, major: u32) -> Result<()> {
    let volumes =
        podman(&["image", "inspect", "--format", "{{range $k, $v := .Config.Volumes}}{{$k}} {{end}}", &image])?;
    let volume_path = volumes.split_whitespace().next().context("the image declares no volume")?.to_string();
    let suffix = random_hex(4);
    let dir = PathBuf::from(format!("/tmp/secretgate-image-{suffix}"));
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))?;
    let mut w = Walk {
        image,
        major,
        suffix,
        port: free_port()?,
        dir,
        volume_path,
        containers: Vec::new(),
        volumes: Vec::new(),
        password: random_hex(16),
        needles: Vec::new(),
    };
    let keys = TestKeys::generate(1);
    let other_keys = TestKeys::generate(1);
    w.needles.extend(keys.encodings());
    w.needles.extend(other_keys.encodings());
    w.needles.push(w.password.clone());

    // The secrets podman keeps: the keyring and the superuser's password.
    let keyring_src = w.dir.join("keyring.json");
    std::fs::write(&keyring_src, keys.to_json())?;
    std::fs::set_permissions(&keyring_src, std::fs::Permissions::from_mode(0o600))?;
    podman(&["secret", "create", &w.secret("keyring"), path_str(&keyring_src)])?;
    let password_src = w.dir.join("password");
    std::fs::write(&password_src, &w.password)?;
    podman(&["secret", "create", &w.secret("password"), path_str(&password_src)])?;
    std::fs::remove_file(&keyring_src)?;
    std::fs::remove_file(&password_src)?;
    w.new_volume("data")?;
    let keyring_secret =
        format!("{},target=secretgate_keyring,uid={SERVER_UID},gid={SERVER_UID},mode=0400", w.secret("keyring"));

    // 1. The first start: initialisation, migrations, the tour, the gates.
    let first = w.start("first", &["--secret", &keyring_secret], &["wal_level=logical"])?;
    let mut conn = w.connect(&first, "platform").await?;
    let extension: Option<String> =
        sqlx::query_scalar("SELECT extversion FROM pg_extension WHERE extname = 'secretgate'")
            .fetch_optional(&mut conn)
            .await?;
    ensure!(
        extension.as_deref() == Some(env!("CARGO_PKG_VERSION")),
        "the init script did not create secretgate {} in POSTGRES_DB (found {extension:?})",
        env!("CARGO_PKG_VERSION")
    );
    let preload: String = sqlx::query_scalar("SHOW shared_preload_libraries").fetch_one(&mut conn).await?;
    ensure!(preload.split(',').any(|l| l.trim() == "secretgate"), "secretgate is not preloaded ({preload:?})");
    let wal_level: String = sqlx::query_scalar("SHOW wal_level").fetch_one(&mut conn).await?;
    ensure!(wal_level == "logical", "wal_level=logical on the command line gave wal_level {wal_level}");
    let healthcheck = compose_healthcheck()?;
    podman(&["exec", &first, "sh", "-c", &healthcheck]).context("docker/compose.yaml's healthcheck")?;
    let version: i32 =
        sqlx::query_scalar("SELECT current_setting('server_version_num')::int").fetch_one(&mut conn).await?;
    ensure!(version as u32 / 10_000 == w.major, "the container runs PostgreSQL {version}, not {}", w.major);
    let migrated = run_cli(Some(&w.url("platform")), &["migrate", "run"]).await?;
    ensure!(migrated.code == Some(0), "secretgate migrate run:\n{migrated}");

    let ws = Uuid::new_v4();
    sqlx::query("INSERT INTO workspaces (id, kind, status) VALUES ($1, 'workspace', 'provisioning')")
        .bind(ws)
        .execute(&mut conn)
        .await?;
    let (value, global) = (format!("sk-image-{}", random_hex(12)), format!("sk-image-{}", random_hex(12)));
    w.needles.push(value.clone());
    w.needles.push(global.clone());
    sqlx::query("SELECT secretgate.set_secret($1, 'ANTHROPIC_API_KEY', $2)")
        .bind(ws)
        .bind(&value)
        .execute(&mut conn)
        .await?;
    sqlx::query("SELECT secretgate.set_global_secret('OPENAI_API_KEY', $1)").bind(&global).execute(&mut conn).await?;
    read_back(&mut conn, ws, &value, &global, "after the first start").await?;

    let tour = Command::new(pg_bin().join("psql"))
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=0", "-f"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/tour.sql"))
        .arg(w.url("platform"))
        .output()
        .context("run psql with the tour")?;
    let tour = format!("{}{}", String::from_utf8_lossy(&tour.stdout), String::from_utf8_lossy(&tour.stderr));
    for code in ["SG101", "SG102", "SG103", "SG105", "SG107", "SG001"] {
        ensure!(tour.contains(code), "the tour did not show {code}:\n{tour}");
    }
    one_refusal_per_gate(&mut conn, ws).await?;
    conn.close().await?;
    w.stop(&first)?;

    // 2. Stopped and started again, a new container on the same volume.
    let again = w.start("again", &["--secret", &keyring_secret], &[])?;
    let mut conn = w.connect(&again, "platform").await?;
    read_back(&mut conn, ws, &value, &global, "after a restart on the same volume").await?;
    conn.close().await?;
    w.stop(&again)?;
    ensure!(
        w.logs(&again).contains("Skipping initialization"),
        "the second start initialised the volume again:\n{}",
        w.logs(&again)
    );

    // 3. The keyring command, over a root-owned file its group reads.
    let shared = w.keyring_file("group-readable.json", &keys, 0, SERVER_UID, 0o440)?;
    let mount = format!("{}:/etc/secretgate/keyring.json:ro", shared.display());
    let command =
        w.start("command", &["-v", &mount, "-e", "SECRETGATE_KEYRING_COMMAND=cat /etc/secretgate/keyring.json"], &[])?;
    let mut conn = w.connect(&command, "platform").await?;
    read_back(&mut conn, ws, &value, &global, "with SECRETGATE_KEYRING_COMMAND").await?;
    conn.close().await?;
    w.stop(&command)?;

    // 4. Another keyring, as a bind-mounted file: no value, SG004.
    let wrong = w.keyring_file("other.json", &other_keys, SERVER_UID, SERVER_UID, 0o400)?;
    let mount = format!("{}:/run/secrets/secretgate_keyring:ro", wrong.display());
    let wrong_keyring = w.start("wrong-keyring", &["-v", &mount], &[])?;
    let mut conn = w.connect(&wrong_keyring, "platform").await?;
    let r = sqlx::query("SELECT secretgate.read_secret($1, 'ANTHROPIC_API_KEY')").bind(ws).execute(&mut conn).await;
    expect_sg(r, Code::KeyMismatch).context("reading with another keyring")?;
    conn.close().await?;
    w.stop(&wrong_keyring)?;

    // 5. A data folder the base image made, with a preload list of its own:
    // changing the image is the whole move.
    let base = podman(&["image", "inspect", "--format", "{{index .Labels \"secretgate.base\"}}", &w.image])?;
    let base = base.trim().to_string();
    ensure!(!base.is_empty(), "the image has no secretgate.base label (scripts/image.sh sets it)");
    let volume = w.new_volume("official")?;
    let official = w.start_on("official", &base, &volume, &[], &[])?;
    let conn = w.connect(&official, "platform").await?;
    conn.close().await?;
    w.stop(&official)?;
    let image = w.image.clone();
    let moved = w.start_on(
        "moved",
        &image,
        &volume,
        &["--secret", &keyring_secret],
        &["shared_preload_libraries=pg_stat_statements"],
    )?;
    let mut conn = w.connect(&moved, "platform").await?;
    let preload: String = sqlx::query_scalar("SHOW shared_preload_libraries").fetch_one(&mut conn).await?;
    ensure!(
        preload == "pg_stat_statements,secretgate",
        "on the base image's data folder, shared_preload_libraries is {preload:?}, not the server's own list with secretgate added"
    );
    let migrated = run_cli(Some(&w.url("platform")), &["migrate", "run"]).await?;
    ensure!(migrated.code == Some(0), "secretgate migrate run on the base image's data folder:\n{migrated}");
    let moved_ws = Uuid::new_v4();
    sqlx::query("INSERT INTO workspaces (id, kind, status) VALUES ($1, 'workspace', 'provisioning')")
        .bind(moved_ws)
        .execute(&mut conn)
        .await?;
    sqlx::query("SELECT secretgate.set_secret($1, 'ANTHROPIC_API_KEY', $2)")
        .bind(moved_ws)
        .bind(&value)
        .execute(&mut conn)
        .await?;
    let read: Option<String> = sqlx::query_scalar("SELECT secretgate.read_secret($1, 'ANTHROPIC_API_KEY')")
        .bind(moved_ws)
        .fetch_one(&mut conn)
        .await?;
    ensure!(read.as_deref() == Some(value.as_str()), "on the base image's data folder, a secret does not read back");
    conn.close().await?;
    w.stop(&moved)?;

    // 6. No keyring: refused at start, with the documented line, before the server.
    let missing = w.start("no-keyring", &[], &[])?;
    let code = podman(&["wait", &missing])?;
    ensure!(code.trim() != "0", "the container without a keyring exited with 0");
    let logs = w.logs(&missing);
    ensure!(
        logs.lines().any(|l| l == NO_KEYRING),
        "the container without a keyring did not log\n{NO_KEYRING}\n---\n{logs}"
    );
    ensure!(!logs.contains("database system is ready"), "the server started without a keyring:\n{logs}");

    // 7. Nothing secret in what podman shows.
    let mut shown = vec![("the image's inspect output".to_string(), podman(&["image", "inspect", &w.image])?)];
    for name in w.containers.clone() {
        shown.push((format!("podman logs {name}"), w.logs(&name)));
        shown.push((format!("podman inspect {name}"), podman(&["inspect", &name])?));
    }
    for (what, text) in &shown {
        for (i, needle) in w.needles.iter().enumerate() {
            ensure!(
                !text.contains(needle.as_str()),
                "{what} shows secret #{i} (a key, the password or a stored value)"
            );
        }
    }
    Ok(())
}

/// The shell command of docker/compose.yaml's healthcheck (`test: ["CMD-SHELL", "…"]`,
/// a flow sequence of double-quoted strings, which is JSON).
fn compose_healthcheck() -> Result<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docker/compose.yaml");
    let text = std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    let line = text
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix("test: "))
        .context("docker/compose.yaml has no healthcheck test")?;
    let test: Vec<String> = serde_json::from_str(line).context("the healthcheck test is not a list of strings")?;
    match test.as_slice() {
        [kind, command] if kind == "CMD-SHELL" => Ok(command.clone()),
        _ => bail!("the healthcheck test is not [\"CMD-SHELL\", COMMAND]: {test:?}"),
    }
}

async fn read_back(conn: &mut PgConnection, ws: Uuid, value: &str, global: &str, when: &str) -> Result<()> {
    let read: Option<String> = sqlx::query_scalar("SELECT secretgate.read_secret($1, 'ANTHROPIC_API_KEY')")
        .bind(ws)
        .fetch_one(&mut *conn)
        .await
        .with_context(|| format!("{when}: read_secret"))?;
    ensure!(read.as_deref() == Some(value), "{when}: the workspace secret does not read back");
    let read: Option<String> = sqlx::query_scalar("SELECT secretgate.read_global_secret('OPENAI_API_KEY')")
        .fetch_one(&mut *conn)
        .await
        .with_context(|| format!("{when}: read_global_secret"))?;
    ensure!(read.as_deref() == Some(global), "{when}: the global secret does not read back");
    Ok(())
}
