//! Sign-in to a tool's own origin: the dashboard origin hands out a single-use ticket bound
//! to one tool; the tool origin redeems it for a session cookie of its own. Both live in
//! memory only: a node restart signs every tool out.
//!
//! Browsers send cookies to every port of a host, so a tool cookie reaches the dashboard and
//! every other tool. Each tool session is therefore bound to the one tool it was issued for
//! and is worth nothing anywhere else.

use std::time::Duration;

use crate::auth::Principal;

use super::tokens::TokenMap;

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
}

struct ToolSession {
    principal: Principal,
    key: ToolKey,
}

/// Outstanding tickets and live tool sessions.
pub struct ToolTickets {
    tickets: TokenMap<Ticket>,
    sessions: TokenMap<ToolSession>,
}

impl Default for ToolTickets {
    fn default() -> ToolTickets {
        ToolTickets {
            tickets: TokenMap::new(MAX_TICKETS),
            sessions: TokenMap::new(MAX_SESSIONS),
        }
    }
}

impl ToolTickets {
    /// A ticket signing `principal` into `key`'s origin, landing on `next` (a path under the
    /// tool's base path, checked by the caller).
    pub fn issue(&self, principal: Principal, key: ToolKey, next: String) -> String {
        let ticket = Ticket {
            principal,
            key,
            next,
        };
        self.tickets.insert(ticket, TICKET_TTL)
    }

    /// Redeems a ticket on `key`'s origin: the ticket is gone whatever the outcome, so a
    /// leaked URL (history, logs, a screen share) cannot be replayed.
    pub fn redeem(&self, ticket: &str, key: &ToolKey) -> Option<(Principal, String)> {
        let found = self.tickets.take(ticket)?;
        (found.key == *key).then_some((found.principal, found.next))
    }

    /// Starts a session on `key`'s origin; the id goes into that origin's cookie.
    pub fn start_session(&self, principal: Principal, key: ToolKey) -> String {
        self.sessions
            .insert(ToolSession { principal, key }, SESSION_IDLE)
    }

    /// The principal of a session, when it is live and was issued for `key`.
    pub fn session(&self, id: &str, key: &ToolKey) -> Option<Principal> {
        self.sessions
            .touch(id, |s| (s.key == *key).then(|| s.principal.clone()))
            .flatten()
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
