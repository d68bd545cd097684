//! Pairing with a short code: the person shows a code on one node (`POST /pairing`) and types
//! it on the other (`POST /peers/{peer}/pair`); the two nodes then trust each other's keys.
//!
//! The code never crosses the network. The node where it was typed calls the peer over mutual
//! TLS and sends `HMAC-SHA256(code, "aienv pair request" ‖ callee key ‖ caller key)`; the peer
//! checks it against the keys of that very connection (its own, and the certificate the caller
//! presented) and answers `HMAC-SHA256(code, "aienv pair response" ‖ callee key ‖ caller key)`.
//! A host in the middle with keys of its own cannot forward either proof, and holds only a
//! MAC to guess 50 bits from within the code's 5 minutes. A code is single-use and dies after
//! 5 wrong proofs.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::Utc;
use ring::hmac;

use aienv_actors::identity::KeyFingerprint;

use crate::api::{PairConfirm, PairRequest, PairingCodeDto, TrustedPeerDto};
use crate::tls;

use super::peers::caller_key;
use super::{ApiError, AppState, Login};

/// How long a code may be used.
const LIFETIME: Duration = Duration::from_secs(300);
/// Wrong proofs before the code is withdrawn.
const MAX_ATTEMPTS: u32 = 5;
const REQUEST_LABEL: &[u8] = b"aienv pair request";
const RESPONSE_LABEL: &[u8] = b"aienv pair response";

/// The code this node shows now, if any (one at a time: a new one replaces it).
#[derive(Default)]
pub struct Pairing {
    active: Mutex<Option<ActiveCode>>,
}

struct ActiveCode {
    code: String,
    made: Instant,
    attempts: u32,
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/pairing", web::post().to(show_code))
        .route("/pairing", web::delete().to(withdraw_code))
        .route("/pairing/confirm", web::post().to(confirm))
        .route("/peers/{peer}/pair", web::post().to(pair));
}

/// `XXXXX-XXXXX`: 50 random bits in the key id's alphabet.
fn new_code() -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut bytes = [0u8; 10];
    getrandom::fill(&mut bytes).expect("the OS provides randomness");
    let chars: String = bytes
        .iter()
        .map(|b| ALPHABET[(*b & 31) as usize] as char)
        .collect();
    format!("{}-{}", &chars[..5], &chars[5..])
}

/// The code as typed: upper case, without separators.
fn normalize(code: &str) -> String {
    code.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

fn proof(code: &str, label: &[u8], callee: &KeyFingerprint, caller: &KeyFingerprint) -> Vec<u8> {
    let key = hmac::Key::new(hmac::HMAC_SHA256, normalize(code).as_bytes());
    let mut context = hmac::Context::with_key(&key);
    context.update(label);
    context.update(&callee.0);
    context.update(&caller.0);
    context.sign().as_ref().to_vec()
}

fn verify(
    code: &str,
    label: &[u8],
    callee: &KeyFingerprint,
    caller: &KeyFingerprint,
    tag: &[u8],
) -> bool {
    let key = hmac::Key::new(hmac::HMAC_SHA256, normalize(code).as_bytes());
    let mut message = Vec::with_capacity(label.len() + 64);
    message.extend_from_slice(label);
    message.extend_from_slice(&callee.0);
    message.extend_from_slice(&caller.0);
    // Constant time.
    hmac::verify(&key, &message, tag).is_ok()
}

/// Lower-case hex of `bytes`.
pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The 32 bytes of a 64-digit hex string (an HMAC-SHA256 tag), either case.
pub(super) fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    (0..32)
        .map(|i| u8::from_str_radix(&text[i * 2..i * 2 + 2], 16).ok())
        .collect()
}

/// Shows a new code (replacing any earlier one).
async fn show_code(state: web::Data<AppState>, login: Login) -> Result<HttpResponse, ApiError> {
    super::permissions::require_admin(&state, &login.0, "pair with peers")?;
    let code = new_code();
    let expires = Utc::now() + chrono::Duration::from_std(LIFETIME).expect("small");
    *state
        .pairing
        .active
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = Some(ActiveCode {
        code: code.clone(),
        made: Instant::now(),
        attempts: 0,
    });
    tracing::info!(by = %login.name(), "pairing code shown");
    Ok(HttpResponse::Ok().json(PairingCodeDto {
        code,
        expires_at: expires,
        key_id: state.node.key.to_readable(),
    }))
}

/// Withdraws the code shown.
async fn withdraw_code(state: web::Data<AppState>, login: Login) -> Result<HttpResponse, ApiError> {
    super::permissions::require_admin(&state, &login.0, "pair with peers")?;
    state
        .pairing
        .active
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    Ok(HttpResponse::NoContent().finish())
}

fn refused(message: &str) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "pairing-refused", message)
}

/// Node to node: a peer proves it knows the code shown here; both keys come from this
/// connection.
async fn confirm(
    state: web::Data<AppState>,
    request: HttpRequest,
    body: web::Json<PairConfirm>,
) -> Result<HttpResponse, ApiError> {
    let Some(caller) = caller_key(&request) else {
        return Err(refused(
            "pairing is between nodes: call over TLS with the node's certificate",
        ));
    };
    let tag = unhex(&body.proof).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-field",
            "`proof` is 64 hex digits",
        )
    })?;
    let own = state.node.key;
    let code = {
        let mut active = state
            .pairing
            .active
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let Some(current) = active.as_mut() else {
            return Err(refused("no pairing code is shown on this node"));
        };
        if current.made.elapsed() > LIFETIME {
            *active = None;
            return Err(refused("the pairing code expired; show a new one"));
        }
        if !verify(&current.code, REQUEST_LABEL, &own, &caller, &tag) {
            current.attempts += 1;
            tracing::warn!(caller = %caller, attempts = current.attempts, "wrong pairing proof");
            if current.attempts >= MAX_ATTEMPTS {
                *active = None;
                return Err(refused(
                    "wrong pairing code; too many attempts, the code was withdrawn",
                ));
            }
            return Err(refused("wrong pairing code"));
        }
        // Single use.
        active.take().expect("checked above").code
    };
    let record = state
        .peers
        .trust(&caller.to_hex(), Some(caller), "pairing")
        .await?;
    tracing::info!(peer = %record.name, key = %caller, "paired");
    Ok(HttpResponse::Ok().json(PairConfirm {
        proof: hex(&proof(&code, RESPONSE_LABEL, &own, &caller)),
    }))
}

/// Pairs with a known peer using the code shown on it.
async fn pair(
    state: web::Data<AppState>,
    login: Login,
    path: web::Path<String>,
    body: web::Json<PairRequest>,
) -> Result<HttpResponse, ApiError> {
    super::permissions::require_admin(&state, &login.0, "pair with peers")?;
    let code = body.into_inner().code;
    if normalize(&code).len() != 10 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-field",
            format!("`{code}` is not a pairing code: ten letters and digits, as XXXXX-XXXXX"),
        ));
    }
    let view = state.peers.view();
    let wanted = path.into_inner();
    let peer = view
        .peers
        .iter()
        .find(|p| p.id.to_string() == wanted || p.name == wanted || p.key.to_readable() == wanted)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "peer-not-found",
                format!("no peer `{wanted}` is known; pairing needs a peer this node has heard"),
            )
        })?
        .clone();
    let endpoint = peer.endpoint().ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "peer-unreachable",
            format!("no address is known for `{}`", peer.name),
        )
    })?;
    let own = state.node.key;
    let config = tls::client_config(Some(&state.identity), endpoint.key).map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "tls-unavailable",
            e.to_string(),
        )
    })?;
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(10))
        .connector(awc::Connector::new().rustls_0_23(std::sync::Arc::new(config)))
        .finish();
    let request = PairConfirm {
        proof: hex(&proof(&code, REQUEST_LABEL, &endpoint.key, &own)),
    };
    let unreachable = |message: String| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "peer-unreachable",
            format!("`{}`: {message}", peer.name),
        )
    };
    let mut response = client
        .post(format!("{}/api/v1/pairing/confirm", endpoint.url))
        .send_json(&request)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let body = response
        .body()
        .limit(64 * 1024)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    if !response.status().is_success() {
        let message = serde_json::from_slice::<crate::api::ErrorBody>(&body)
            .map(|e| e.error.message)
            .unwrap_or_else(|_| format!("HTTP {}", response.status()));
        return Err(refused(&format!("`{}` refused: {message}", peer.name)));
    }
    let answer: PairConfirm =
        serde_json::from_slice(&body).map_err(|e| unreachable(format!("answer: {e}")))?;
    let tag = unhex(&answer.proof).ok_or_else(|| unreachable("answer: malformed proof".into()))?;
    if !verify(&code, RESPONSE_LABEL, &endpoint.key, &own, &tag) {
        return Err(refused(&format!(
            "`{}` does not know the code: do not trust it",
            peer.name
        )));
    }
    let record = state
        .peers
        .trust(&peer.id.to_string(), Some(endpoint.key), login.name())
        .await?;
    Ok(HttpResponse::Ok().json(TrustedPeerDto::from(&record)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_bind_the_code_and_both_keys() {
        let (a, b, m) = (
            KeyFingerprint([1; 32]),
            KeyFingerprint([2; 32]),
            KeyFingerprint([3; 32]),
        );
        let code = new_code();
        assert_eq!(code.len(), 11);
        let tag = proof(&code, REQUEST_LABEL, &b, &a);
        assert!(verify(&code.to_lowercase(), REQUEST_LABEL, &b, &a, &tag));
        // Another code, another callee or caller key, or the other direction: refused.
        assert!(!verify("AAAAA-AAAAA", REQUEST_LABEL, &b, &a, &tag));
        assert!(!verify(&code, REQUEST_LABEL, &m, &a, &tag));
        assert!(!verify(&code, REQUEST_LABEL, &b, &m, &tag));
        assert!(!verify(&code, RESPONSE_LABEL, &b, &a, &tag));
        assert_eq!(unhex(&hex(&tag)).unwrap(), tag);
        assert!(unhex("zz").is_none());
    }
}
