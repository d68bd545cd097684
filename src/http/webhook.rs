//! Incoming webhooks: `POST /api/v1/hooks/{name}` from GitHub, Gitea, GitLab or anything that
//! signs the same way. No login: the shared secret is the credential. GitHub and Gitea sign
//! the body (`X-Hub-Signature-256: sha256=<HMAC-SHA256 hex>`), GitLab sends the secret itself
//! (`X-Gitlab-Token`); both are compared in constant time, and nothing runs unless one
//! matches. A delivery id seen before answers with the run it started; a `ping` and a push to
//! a branch the hook does not follow start nothing. Answered at once: the run goes on.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use ring::hmac;

use aienv_actors::ci::{CiRequest, Trigger};

use crate::api::HookAnswer;
use crate::config::IncomingHook;

use super::{ApiError, AppState};

/// Largest delivery accepted (GitHub's payloads stay well under this).
pub const MAX_DELIVERY: usize = 8 << 20;

pub async fn deliver(
    state: web::Data<AppState>,
    request: HttpRequest,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let name = path.into_inner();
    let Some(hook) = state.ci_hooks.iter().find(|h| h.name == name) else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "hook-not-found",
            format!("no webhook named `{name}` on this node"),
        ));
    };
    let secret = secret_of(hook)?;
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    verify(
        &secret,
        &body,
        header("x-hub-signature-256"),
        header("x-gitlab-token"),
    )
    .map_err(|why| {
        tracing::warn!(hook = %name, %why, "webhook delivery refused");
        ApiError::new(StatusCode::UNAUTHORIZED, "bad-signature", why)
    })?;
    let event = header("x-github-event")
        .or_else(|| header("x-gitea-event"))
        .or_else(|| header("x-gitlab-event"));
    let delivery = header("x-github-delivery")
        .or_else(|| header("x-gitea-delivery"))
        .or_else(|| header("x-gitlab-event-uuid"));
    if event.as_deref() == Some("ping") {
        return Ok(HttpResponse::Ok().json(HookAnswer {
            run_id: None,
            number: None,
            duplicate: false,
            ignored: Some("ping".into()),
        }));
    }
    if !hook.branches.is_empty() {
        let pushed = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("ref").and_then(|r| r.as_str()).map(str::to_string));
        let followed = pushed.as_deref().is_some_and(|r| {
            hook.branches
                .iter()
                .any(|b| r == format!("refs/heads/{b}") || r == b)
        });
        if !followed {
            return Ok(HttpResponse::Ok().json(HookAnswer {
                run_id: None,
                number: None,
                duplicate: false,
                ignored: Some(format!(
                    "{} is not one of the followed branches ({})",
                    pushed.as_deref().unwrap_or("a delivery without `ref`"),
                    hook.branches.join(", ")
                )),
            }));
        }
    }
    let started = state
        .ci
        .start_run(CiRequest {
            workspace: hook.workspace.clone(),
            environment: hook.environment.clone(),
            command: hook.command.clone(),
            pull: hook.pull,
            timeout: Duration::from_secs(hook.timeout_seconds.max(1)),
            trigger: Trigger {
                by: format!("hook:{name}"),
                hook: Some(name.clone()),
                event,
                delivery,
            },
            on: None,
            borrower: None,
            transfer: None,
        })
        .await?;
    let answer = HookAnswer {
        run_id: Some(started.run.id),
        number: Some(started.run.number),
        duplicate: started.duplicate,
        ignored: None,
    };
    Ok(if started.duplicate {
        HttpResponse::Ok().json(answer)
    } else {
        tracing::info!(hook = %name, run = started.run.number, "webhook started a CI run");
        HttpResponse::Accepted().json(answer)
    })
}

/// The hook's secret, from the configuration or its file.
fn secret_of(hook: &IncomingHook) -> Result<Vec<u8>, ApiError> {
    if let Some(secret) = &hook.secret {
        return Ok(secret.as_bytes().to_vec());
    }
    let path = hook
        .secret_file
        .as_ref()
        .expect("checked at start: one of the two");
    std::fs::read_to_string(path)
        .map(|s| s.trim_end_matches(['\n', '\r']).as_bytes().to_vec())
        .map_err(|error| {
            tracing::error!(hook = %hook.name, path = %path.display(), %error, "cannot read a webhook's secret");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "hook-misconfigured",
                format!("webhook `{}` cannot read its secret file; its node's log says why", hook.name),
            )
        })
}

/// Checks a delivery's signature (GitHub, Gitea) or token (GitLab) against `secret`.
fn verify(
    secret: &[u8],
    body: &[u8],
    signature: Option<String>,
    token: Option<String>,
) -> Result<(), String> {
    if let Some(signature) = signature {
        let hex = signature
            .trim()
            .strip_prefix("sha256=")
            .ok_or("X-Hub-Signature-256 is not `sha256=<hex>`")?;
        let tag =
            super::pairing::unhex(hex).ok_or("X-Hub-Signature-256 is not 64 hexadecimal digits")?;
        let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
        return hmac::verify(&key, body, &tag)
            .map_err(|_| "the signature does not match the body and this hook's secret".into());
    }
    if let Some(token) = token {
        return if constant_time_eq(token.as_bytes(), secret) {
            Ok(())
        } else {
            Err("X-Gitlab-Token is not this hook's secret".into())
        };
    }
    Err("the delivery is not signed (X-Hub-Signature-256) and has no token (X-Gitlab-Token)".into())
}

/// Compares without stopping at the first difference (the length is not secret).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `sha256=<hex>` of `body` under `secret`, as forges sign (and as aienv signs what it sends).
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    format!(
        "sha256={}",
        super::pairing::hex(hmac::sign(&key, body).as_ref())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn github_signature_vector() {
        // GitHub's documented example: secret "It's a Secret to Everybody", body
        // "Hello, World!".
        let expected = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(
            sign(b"It's a Secret to Everybody", b"Hello, World!"),
            expected
        );
        verify(
            b"It's a Secret to Everybody",
            b"Hello, World!",
            Some(expected.into()),
            None,
        )
        .unwrap();
        assert!(verify(b"other", b"Hello, World!", Some(expected.into()), None).is_err());
        assert!(verify(b"k", b"x", Some("sha1=00".into()), None).is_err());
        assert!(verify(b"k", b"x", None, None).is_err());
        verify(b"token-123", b"x", None, Some("token-123".into())).unwrap();
        assert!(verify(b"token-123", b"x", None, Some("token-124".into())).is_err());
    }
}
