//! Who may do what: the admin token, users with argon2 password hashes, and the network
//! checks (private addresses only, no DNS rebinding) applied before any route runs.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use serde::{Deserialize, Serialize};

/// Name of the admin token file in the data dir.
pub const TOKEN_FILE: &str = "admin.token";
/// Name of the users file in the data dir.
pub const USERS_FILE: &str = "users.yaml";

/// How long a verified password is remembered, so Basic auth does not run argon2 on every
/// request.
const VERIFIED_TTL: Duration = Duration::from_secs(300);

/// Authentication and user-file errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The users file is invalid.
    #[error(transparent)]
    UsersFile(#[from] aienv_actors::yaml::YamlError),
    /// A user name is not valid.
    #[error(
        "`{0}` is not a valid user name: use 1 to 63 lower-case letters, digits, `-`, `_` or `.`"
    )]
    BadName(String),
    /// The user already exists.
    #[error("user `{0}` already exists")]
    UserExists(String),
    /// The user does not exist.
    #[error("no user `{0}`")]
    NoSuchUser(String),
    /// The name is the admin token's.
    #[error("`admin` is reserved for the holder of the admin token; give the user another name (and `--role admin` if they should be one)")]
    ReservedName,
    /// The role is unknown.
    #[error("`{0}` is not a role: use admin, member or viewer")]
    BadRole(String),
    /// The password is unusable.
    #[error("the password must be 8 to 1024 characters long")]
    BadPassword,
    /// Hashing failed.
    #[error("password hashing failed: {0}")]
    Hash(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AuthError + '_ {
    move |source| AuthError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Replaces `path` atomically with a file only its owner can read (mode 0600).
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), AuthError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let temp = path.with_file_name(format!(".{name}.tmp"));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp)
        .map_err(io(&temp))?;
    file.write_all(bytes)
        .and_then(|_| file.sync_all())
        .map_err(io(&temp))?;
    std::fs::rename(&temp, path).map_err(io(path))
}

/// Reads the admin token from `data_dir`, creating a fresh one (mode 0600) at first start.
pub fn load_or_create_token(data_dir: &Path) -> Result<String, AuthError> {
    let path = data_dir.join(TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(token) if !token.trim().is_empty() => return Ok(token.trim().to_string()),
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(io(&path)(error)),
    }
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| AuthError::Hash(e.to_string()))?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    write_private(&path, format!("{token}\n").as_bytes())?;
    Ok(token)
}

/// The users file: `users: [{name, password_hash, created}]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsersFile {
    /// The users.
    #[serde(default)]
    pub users: Vec<UserRecord>,
}

/// One user.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserRecord {
    /// Login name.
    pub name: String,
    /// argon2id PHC string.
    pub password_hash: String,
    /// What the user may do (files written before roles existed hold members).
    #[serde(default)]
    pub role: Role,
    /// When the user was added.
    pub created: chrono::DateTime<chrono::Utc>,
}

/// What a person may do on a node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything: every workspace, trust and pairing (the admin token is one).
    Admin,
    /// Creates workspaces and runs, shares and changes their own, and others' where the
    /// owner made them a member.
    #[default]
    Member,
    /// Browses and clones; keeps (syncs, deletes) only what they cloned.
    Viewer,
}

impl Role {
    /// Every role, in order of power.
    pub const ALL: [Role; 3] = [Role::Admin, Role::Member, Role::Viewer];

    /// The name used in `users.yaml` and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Member => "member",
            Role::Viewer => "viewer",
        }
    }

    /// Parses a role name.
    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == text)
    }
}

impl UsersFile {
    /// Reads `<data_dir>/users.yaml` (empty when absent).
    pub fn load(data_dir: &Path) -> Result<UsersFile, AuthError> {
        let path = data_dir.join(USERS_FILE);
        if !path.exists() {
            return Ok(UsersFile::default());
        }
        Ok(aienv_actors::yaml::read_file(&path)?)
    }

    /// Writes `<data_dir>/users.yaml` atomically with mode 0600.
    pub fn save(&self, data_dir: &Path) -> Result<(), AuthError> {
        let text = aienv_actors::yaml::to_string(self);
        write_private(&data_dir.join(USERS_FILE), text.as_bytes())
    }

    /// Adds a user with an argon2id hash of `password`.
    pub fn add(&mut self, name: &str, password: &str, role: Role) -> Result<(), AuthError> {
        let valid = !name.is_empty()
            && name.len() <= 63
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
        if !valid {
            return Err(AuthError::BadName(name.to_string()));
        }
        if name == ADMIN_NAME {
            return Err(AuthError::ReservedName);
        }
        if self.users.iter().any(|u| u.name == name) {
            return Err(AuthError::UserExists(name.to_string()));
        }
        if password.chars().count() < 8 || password.len() > 1024 {
            return Err(AuthError::BadPassword);
        }
        let mut salt = [0u8; 16];
        getrandom::fill(&mut salt).map_err(|e| AuthError::Hash(e.to_string()))?;
        let salt = SaltString::encode_b64(&salt).map_err(|e| AuthError::Hash(e.to_string()))?;
        let hash = Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map_err(|e| AuthError::Hash(e.to_string()))?
            .to_string();
        self.users.push(UserRecord {
            name: name.to_string(),
            password_hash: hash,
            role,
            created: chrono::Utc::now(),
        });
        Ok(())
    }

    /// Changes a user's role.
    pub fn set_role(&mut self, name: &str, role: Role) -> Result<(), AuthError> {
        let user = self
            .users
            .iter_mut()
            .find(|u| u.name == name)
            .ok_or_else(|| AuthError::NoSuchUser(name.to_string()))?;
        user.role = role;
        Ok(())
    }

    /// Removes a user.
    pub fn remove(&mut self, name: &str) -> Result<(), AuthError> {
        let before = self.users.len();
        self.users.retain(|u| u.name != name);
        if self.users.len() == before {
            return Err(AuthError::NoSuchUser(name.to_string()));
        }
        Ok(())
    }
}

/// The name the admin token acts under (revision history, owners).
pub const ADMIN_NAME: &str = "admin";

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// Holder of the node's admin token.
    Admin,
    /// A user from the users file.
    User(String),
}

impl Principal {
    /// Name recorded in revision history.
    pub fn name(&self) -> &str {
        match self {
            Principal::Admin => ADMIN_NAME,
            Principal::User(name) => name,
        }
    }
}

/// Credentials presented with a request.
#[derive(Debug, Clone)]
pub enum Presented {
    /// `Authorization: Bearer TOKEN`.
    Bearer(String),
    /// `Authorization: Basic ...`.
    Basic {
        /// User name.
        user: String,
        /// Password.
        password: String,
    },
}

impl Presented {
    /// Parses an `Authorization` header value; `None` when it is malformed.
    pub fn parse(header: &str) -> Option<Presented> {
        let (scheme, rest) = header.trim().split_once(' ')?;
        if scheme.eq_ignore_ascii_case("bearer") {
            return Some(Presented::Bearer(rest.trim().to_string()));
        }
        if scheme.eq_ignore_ascii_case("basic") {
            let decoded = base64_decode(rest.trim())?;
            let text = String::from_utf8(decoded).ok()?;
            let (user, password) = text.split_once(':')?;
            return Some(Presented::Basic {
                user: user.to_string(),
                password: password.to_string(),
            });
        }
        None
    }
}

/// Checks credentials against the admin token and the users file (re-read when it changes,
/// so `aienv user add` needs no restart).
pub struct Authenticator {
    token: String,
    users_path: PathBuf,
    users: Mutex<UsersCache>,
}

#[derive(Default)]
struct UsersCache {
    stamp: Option<(u64, std::time::SystemTime)>,
    hashes: BTreeMap<String, String>,
    roles: BTreeMap<String, Role>,
    verified: HashMap<(String, [u8; 32]), Instant>,
}

impl Authenticator {
    /// An authenticator for the node whose data dir is `data_dir`.
    pub fn new(token: String, data_dir: &Path) -> Authenticator {
        Authenticator {
            token,
            users_path: data_dir.join(USERS_FILE),
            users: Mutex::new(UsersCache::default()),
        }
    }

    /// Whether `presented` is valid. Runs argon2 (tens of milliseconds) unless the same
    /// password was verified recently; call it off the async workers.
    pub fn verify(&self, presented: &Presented) -> Option<Principal> {
        match presented {
            Presented::Bearer(token) => constant_time_eq(token.as_bytes(), self.token.as_bytes())
                .then_some(Principal::Admin),
            Presented::Basic { user, password } => {
                let digest = *blake3::hash(password.as_bytes()).as_bytes();
                let key = (user.clone(), digest);
                let hash = {
                    let mut cache = self.users.lock().unwrap_or_else(|e| e.into_inner());
                    self.refresh(&mut cache);
                    let hash = cache.hashes.get(user).cloned()?;
                    if cache
                        .verified
                        .get(&key)
                        .is_some_and(|at| at.elapsed() < VERIFIED_TTL)
                    {
                        return Some(Principal::User(user.clone()));
                    }
                    hash
                };
                let parsed = PasswordHash::new(&hash).ok()?;
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .ok()?;
                let mut cache = self.users.lock().unwrap_or_else(|e| e.into_inner());
                cache.verified.retain(|_, at| at.elapsed() < VERIFIED_TTL);
                cache.verified.insert(key, Instant::now());
                Some(Principal::User(user.clone()))
            }
        }
    }

    /// Whether verifying `presented` is cheap (token, or a recently verified password).
    pub fn is_cheap(&self, presented: &Presented) -> bool {
        match presented {
            Presented::Bearer(_) => true,
            Presented::Basic { user, password } => {
                let key = (user.clone(), *blake3::hash(password.as_bytes()).as_bytes());
                let cache = self.users.lock().unwrap_or_else(|e| e.into_inner());
                cache
                    .verified
                    .get(&key)
                    .is_some_and(|at| at.elapsed() < VERIFIED_TTL)
            }
        }
    }

    fn refresh(&self, cache: &mut UsersCache) {
        let stamp = std::fs::metadata(&self.users_path)
            .ok()
            .and_then(|m| Some((m.len(), m.modified().ok()?)));
        if stamp == cache.stamp && stamp.is_some() {
            return;
        }
        cache.stamp = stamp;
        cache.verified.clear();
        let users = match self.users_path.parent().map(UsersFile::load) {
            Some(Ok(file)) => file.users,
            Some(Err(error)) => {
                tracing::error!(%error, "cannot read the users file; password logins are refused");
                Vec::new()
            }
            None => Vec::new(),
        };
        cache.roles = users.iter().map(|u| (u.name.clone(), u.role)).collect();
        cache.hashes = users
            .into_iter()
            .map(|u| (u.name, u.password_hash))
            .collect();
    }

    /// The role `principal` has now (the users file is read again when it changed, so a
    /// changed role applies to open sessions); `None` for a user that was removed.
    pub fn role(&self, principal: &Principal) -> Option<Role> {
        match principal {
            Principal::Admin => Some(Role::Admin),
            Principal::User(name) => {
                let mut cache = self.users.lock().unwrap_or_else(|e| e.into_inner());
                self.refresh(&mut cache);
                cache.roles.get(name).copied()
            }
        }
    }

    /// Whether `name` is a user of this node (or the admin token's name).
    pub fn is_user(&self, name: &str) -> bool {
        name == ADMIN_NAME || self.role(&Principal::User(name.to_string())).is_some()
    }
}

/// Compares secrets without leaking, through timing, how much of them matched.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Network-level rules applied to every request.
#[derive(Debug, Clone)]
pub struct AccessPolicy {
    /// Accept public source addresses.
    pub allow_public: bool,
    /// Host names (lower case) accepted in `Host` besides IP literals and `localhost`.
    pub hostnames: Vec<String>,
    /// Browser origins accepted for the event stream besides same-origin.
    pub allowed_origins: Vec<String>,
}

impl AccessPolicy {
    /// Whether a client at `address` may talk to the node at all.
    pub fn allows_peer(&self, address: IpAddr) -> bool {
        self.allow_public || is_local_address(address)
    }

    /// Whether a `Host` header names this node. IP literals are always fine: a DNS-rebinding
    /// attack needs a host name that the attacker's DNS points at us.
    pub fn allows_host(&self, host: &str) -> bool {
        let name = strip_port(host).to_ascii_lowercase();
        let name = name.trim_end_matches('.');
        name.parse::<IpAddr>().is_ok()
            || name == "localhost"
            || name.ends_with(".localhost")
            || self.hostnames.iter().any(|h| h == name)
    }

    /// Whether a browser page from `origin` may use this node when it answers to `host`.
    pub fn allows_origin(&self, origin: &str, host: &str) -> bool {
        let origin_host = origin
            .split_once("://")
            .map(|(_, rest)| rest)
            .unwrap_or(origin)
            .trim_end_matches('/');
        origin_host.eq_ignore_ascii_case(host)
            || self
                .allowed_origins
                .iter()
                .any(|o| o.eq_ignore_ascii_case(origin))
    }
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// Loopback, private (RFC 1918, CGNAT, ULA) and link-local addresses.
pub fn is_local_address(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || (a == 100 && (64..128).contains(&b))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_local_address(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            v6.is_loopback() || (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80
        }
    }
}

fn base64_decode(input: &str) -> Option<Vec<u8>> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let input = input.trim_end_matches('=');
    if input.len() > 4096 {
        return None;
    }
    let mut out = Vec::with_capacity(input.len() * 3 / 4);
    let mut buffer = 0u32;
    let mut bits = 0;
    for byte in input.bytes() {
        let value = ALPHABET.iter().position(|c| *c == byte)? as u32;
        buffer = (buffer << 6) | value;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// Standard base64 encoding (for the client's Basic header).
pub fn base64_encode(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let n = (chunk[0] as u32) << 16
            | (*chunk.get(1).unwrap_or(&0) as u32) << 8
            | *chunk.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        for local in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.9",
            "172.20.0.1",
            "169.254.1.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:192.168.1.1",
            "100.64.0.1",
        ] {
            assert!(is_local_address(local.parse().unwrap()), "{local}");
        }
        for public in ["8.8.8.8", "172.32.0.1", "2001:db8::1", "::ffff:8.8.8.8"] {
            assert!(!is_local_address(public.parse().unwrap()), "{public}");
        }
    }

    #[test]
    fn hosts_and_origins() {
        let policy = AccessPolicy {
            allow_public: false,
            hostnames: vec!["gpu-box.lab".into()],
            allowed_origins: vec![],
        };
        for ok in [
            "127.0.0.1:37778",
            "[::1]:80",
            "localhost:1",
            "gpu-box.lab",
            "GPU-BOX.lab.",
            "10.0.0.5",
        ] {
            assert!(policy.allows_host(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:37778",
            "localhost.evil.example",
        ] {
            assert!(!policy.allows_host(bad), "{bad}");
        }
        assert!(policy.allows_origin("http://127.0.0.1:37778", "127.0.0.1:37778"));
        assert!(!policy.allows_origin("http://evil.example", "127.0.0.1:37778"));
    }

    #[test]
    fn basic_header_round_trip() {
        let header = format!("Basic {}", base64_encode(b"ada:secret:with:colons"));
        match Presented::parse(&header) {
            Some(Presented::Basic { user, password }) => {
                assert_eq!(
                    (user.as_str(), password.as_str()),
                    ("ada", "secret:with:colons")
                )
            }
            other => panic!("{other:?}"),
        }
        for n in 0..10 {
            let data: Vec<u8> = (0..n).collect();
            assert_eq!(base64_decode(&base64_encode(&data)).unwrap(), data);
        }
    }

    #[test]
    fn users_and_passwords() {
        let dir = tempfile::tempdir().unwrap();
        let mut users = UsersFile::default();
        users.add("ada", "correct horse", Role::Member).unwrap();
        assert!(users.add("ada", "another one", Role::Member).is_err());
        assert!(users.add("Bad Name", "whatever1", Role::Member).is_err());
        assert!(users.add("bob", "short", Role::Member).is_err());
        assert!(matches!(
            users.add("admin", "whatever1", Role::Admin),
            Err(AuthError::ReservedName)
        ));
        users.add("vic", "looking only", Role::Viewer).unwrap();
        users.save(dir.path()).unwrap();
        let auth = Authenticator::new("t0k3n".into(), dir.path());
        let basic = |p: &str| Presented::Basic {
            user: "ada".into(),
            password: p.into(),
        };
        assert_eq!(
            auth.verify(&basic("correct horse")),
            Some(Principal::User("ada".into()))
        );
        assert!(auth.is_cheap(&basic("correct horse")));
        assert_eq!(auth.verify(&basic("wrong horse")), None);
        assert_eq!(
            auth.verify(&Presented::Bearer("t0k3n".into())),
            Some(Principal::Admin)
        );
        assert_eq!(auth.verify(&Presented::Bearer("t0k3".into())), None);
        assert_eq!(auth.role(&Principal::Admin), Some(Role::Admin));
        assert_eq!(
            auth.role(&Principal::User("vic".into())),
            Some(Role::Viewer)
        );
        assert_eq!(auth.role(&Principal::User("nobody".into())), None);
        // Files from before roles: members.
        let old = "users:\n- name: old\n  password_hash: x\n  created: 2026-01-01T00:00:00Z\n";
        std::fs::write(dir.path().join(USERS_FILE), old).unwrap();
        assert_eq!(
            UsersFile::load(dir.path()).unwrap().users[0].role,
            Role::Member
        );
    }
}
