//! Sign-in to a tool's own origin: the dashboard origin hands out a single-use ticket bound
//! to one tool; the tool origin redeems it for a session cookie of its own. Both live in
//! memory only: a node restart signs every tool out.
//!
//! Browsers send cookies to every port of a host, so a tool cookie reaches the dashboard and
//! every other tool. Each tool session is therefore bound to the one tool it was issued for
//! and is worth nothing anywhere else.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::auth::Principal;

/// How long a ticket can be redeemed.
pub const TICKET_TTL: Duration = Duration::from_secs(60);
/// How long a tool session lives without use (as the dashboard's).
const SESSION_IDLE: Duration = Duration::from_secs(12 * 3600);
/// Bounds on what unredeemed tickets and idle sessions may hold.
const MAX_TICKETS: usize = 4096;
const MAX_SESSIONS: usize = 10_000;

/// Prefix of every cookie a tool origin sets (`aienv_tool_<port>`): cookies ignore ports,
/// so the port in the name keeps two tools of one host from overwriting each other's.
pub const COOKIE_PREFIX: &str = "aienv_tool_";

/// The tool a ticket or session is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ToolKey {
    /// Workspace name.
    pub workspace: String,
    /// Tool name.
    pub tool: String,
}

struct Ticket {
    principal: Principal,
    key: ToolKey,
    next: String,
    issued: Instant,
}

struct ToolSession {
    principal: Principal,
    key: ToolKey,
    used: Instant,
}

/// Outstanding tickets and live tool sessions.
#[derive(Default)]
pub struct ToolTickets {
    tickets: Mutex<HashMap<String, Ticket>>,
    sessions: Mutex<HashMap<String, ToolSession>>,
}

fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS provides randomness");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl ToolTickets {
    /// A ticket signing `principal` into `key`'s origin, landing on `next` (a path under the
    /// tool's base path, checked by the caller).
    pub fn issue(&self, principal: Principal, key: ToolKey, next: String) -> String {
        let id = random_hex();
        let mut tickets = self.tickets.lock().unwrap_or_else(|e| e.into_inner());
        tickets.retain(|_, t| t.issued.elapsed() < TICKET_TTL);
        if tickets.len() >= MAX_TICKETS {
            if let Some(oldest) = tickets
                .iter()
                .min_by_key(|(_, t)| t.issued)
                .map(|(k, _)| k.clone())
            {
                tickets.remove(&oldest);
            }
        }
        tickets.insert(
            id.clone(),
            Ticket {
                principal,
                key,
                next,
                issued: Instant::now(),
            },
        );
        id
    }

    /// Redeems a ticket on `key`'s origin: the ticket is gone whatever the outcome, so a
    /// leaked URL (history, logs, a screen share) cannot be replayed.
    pub fn redeem(&self, ticket: &str, key: &ToolKey) -> Option<(Principal, String)> {
        let found = self
            .tickets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(ticket)?;
        (found.issued.elapsed() < TICKET_TTL && found.key == *key)
            .then_some((found.principal, found.next))
    }

    /// Starts a session on `key`'s origin; the id goes into that origin's cookie.
    pub fn start_session(&self, principal: Principal, key: ToolKey) -> String {
        let id = random_hex();
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.retain(|_, s| s.used.elapsed() < SESSION_IDLE);
        if sessions.len() >= MAX_SESSIONS {
            if let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.used)
                .map(|(k, _)| k.clone())
            {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(
            id.clone(),
            ToolSession {
                principal,
                key,
                used: Instant::now(),
            },
        );
        id
    }

    /// The principal of a session, when it is live and was issued for `key`.
    pub fn session(&self, id: &str, key: &ToolKey) -> Option<Principal> {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let session = sessions.get_mut(id)?;
        if session.used.elapsed() >= SESSION_IDLE {
            sessions.remove(id);
            return None;
        }
        if session.key != *key {
            return None;
        }
        session.used = Instant::now();
        Some(session.principal.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(tool: &str) -> ToolKey {
        ToolKey {
            workspace: "ws".into(),
            tool: tool.into(),
        }
    }

    #[test]
    fn tickets_are_single_use_and_bound_to_one_tool() {
        let tickets = ToolTickets::default();
        let ticket = tickets.issue(Principal::Admin, key("a"), "/w/ws/a/".into());
        assert!(tickets.redeem(&ticket, &key("b")).is_none());
        // Tried on the wrong tool, it is spent all the same.
        assert!(tickets.redeem(&ticket, &key("a")).is_none());
        let ticket = tickets.issue(Principal::Admin, key("a"), "/w/ws/a/x".into());
        assert_eq!(
            tickets.redeem(&ticket, &key("a")),
            Some((Principal::Admin, "/w/ws/a/x".into()))
        );
        assert!(tickets.redeem(&ticket, &key("a")).is_none());
    }

    #[test]
    fn sessions_count_only_on_their_tool() {
        let tickets = ToolTickets::default();
        let id = tickets.start_session(Principal::User("ada".into()), key("a"));
        assert_eq!(
            tickets.session(&id, &key("a")),
            Some(Principal::User("ada".into()))
        );
        assert_eq!(tickets.session(&id, &key("b")), None);
        assert_eq!(tickets.session("nope", &key("a")), None);
    }
}
