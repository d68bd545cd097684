//! Who may do what with a workspace: the caller's role (`users.yaml`) and the workspace's
//! owner and members. A workspace's owner is whoever made it (created, imported or cloned
//! it: the author of its first revision) until an admin hands it to someone else; members
//! are named by the owner or an admin. Explicit records live in the `workspace_access` tree
//! of the node's database, handed out by the store; a workspace without one is read from its
//! history once and recorded.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::auth::Role;

/// Largest member list of one workspace.
pub const MAX_MEMBERS: usize = 256;

/// Errors of the access records.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AccessError {
    /// The database failed.
    #[error("access records: {0}")]
    Database(#[from] sled::Error),
    /// A record could not be decoded.
    #[error("access record of workspace {id} is unreadable: {message}")]
    Corrupt {
        /// The workspace.
        id: Uuid,
        /// What is wrong.
        message: String,
    },
}

/// A workspace's owner and members, and the peers whose clones may push changes to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceAccess {
    /// Owner's user name (`admin` for the admin token).
    pub owner: String,
    /// Users who may use and change it like its owner (not give it away).
    pub members: Vec<String>,
    /// Trusted peers whose clones may push their changes into it (none by default). Kept
    /// here, on this node, never in `workspace.yaml`: a right to write must not travel with
    /// the content.
    #[serde(default)]
    pub writers: Vec<PeerWriter>,
}

/// A peer allowed to push: its node id (it must also be trusted, by key, when it pushes) and
/// its trusted name when it was added.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerWriter {
    /// Node id.
    pub id: Uuid,
    /// Its trusted name.
    pub name: String,
}

impl WorkspaceAccess {
    /// Whether the peer with node id `peer` may push into the workspace.
    pub fn writable_by(&self, peer: Uuid) -> bool {
        self.writers.iter().any(|w| w.id == peer)
    }
}

/// What someone wants to do with one workspace (seeing it needs only a login, or not even
/// that for shared ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Run and stop it, open its tools and terminal, read its logs.
    Use,
    /// Change its description, environments, sharing or history.
    Change,
    /// Sync it from its origin or delete it: what a viewer may do with what they cloned.
    Keep,
    /// Change its members.
    Grant,
    /// Give it to another owner.
    Transfer,
}

impl Action {
    /// Words for error messages ("may not {what} workspace `x`").
    pub fn what(self) -> &'static str {
        match self {
            Action::Use => "run or open",
            Action::Change => "change",
            Action::Keep => "sync or delete",
            Action::Grant => "change the members of",
            Action::Transfer => "give away",
        }
    }
}

/// Whether a user `name` with `role` may do `action` with a workspace whose access is
/// `access`.
pub fn permits(role: Role, name: &str, access: &WorkspaceAccess, action: Action) -> bool {
    let owner = access.owner == name;
    let member = access.members.iter().any(|m| m == name);
    match (role, action) {
        (Role::Admin, _) => true,
        (_, Action::Transfer) => false,
        (Role::Member, Action::Grant) => owner,
        (Role::Member, _) => owner || member,
        (Role::Viewer, Action::Keep) => owner,
        (Role::Viewer, _) => false,
    }
}

/// Whether `role` may make new workspaces (create, import); cloning is open to every role.
pub fn may_create(role: Role) -> bool {
    role != Role::Viewer
}

/// The explicit access records.
#[derive(Clone)]
pub struct AccessBook {
    tree: sled::Tree,
}

impl AccessBook {
    /// The book over `tree` (the store's `workspace_access`).
    pub fn new(tree: sled::Tree) -> AccessBook {
        AccessBook { tree }
    }

    /// The record of workspace `id`, if one was made.
    pub fn get(&self, id: Uuid) -> Result<Option<WorkspaceAccess>, AccessError> {
        let Some(bytes) = self.tree.get(id.as_bytes())? else {
            return Ok(None);
        };
        rmp_serde::from_slice(&bytes)
            .map(Some)
            .map_err(|e| AccessError::Corrupt {
                id,
                message: e.to_string(),
            })
    }

    /// Records `access` for workspace `id`, durably.
    pub fn put(&self, id: Uuid, access: &WorkspaceAccess) -> Result<(), AccessError> {
        // MessagePack, as every other record in the node's database.
        let bytes = rmp_serde::to_vec_named(access).expect("access records serialize");
        self.tree.insert(id.as_bytes(), bytes)?;
        self.tree.flush()?;
        Ok(())
    }

    /// Forgets workspace `id` (it was deleted).
    pub fn remove(&self, id: Uuid) -> Result<(), AccessError> {
        self.tree.remove(id.as_bytes())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access() -> WorkspaceAccess {
        WorkspaceAccess {
            owner: "ada".into(),
            members: vec!["bob".into()],
            writers: Vec::new(),
        }
    }

    #[test]
    fn roles_owners_and_members() {
        use Action::*;
        let a = access();
        for action in [Use, Change, Keep, Grant, Transfer] {
            assert!(permits(Role::Admin, "root", &a, action));
        }
        for action in [Use, Change, Keep, Grant] {
            assert!(permits(Role::Member, "ada", &a, action), "{action:?}");
        }
        assert!(!permits(Role::Member, "ada", &a, Transfer));
        for action in [Use, Change, Keep] {
            assert!(permits(Role::Member, "bob", &a, action), "{action:?}");
        }
        assert!(!permits(Role::Member, "bob", &a, Grant));
        for action in [Use, Change, Keep, Grant, Transfer] {
            assert!(!permits(Role::Member, "eve", &a, action), "{action:?}");
        }
        // A viewer keeps what they cloned, and nothing more, even as a member.
        let mine = WorkspaceAccess {
            owner: "vic".into(),
            members: vec![],
            writers: Vec::new(),
        };
        assert!(permits(Role::Viewer, "vic", &mine, Keep));
        for action in [Use, Change, Grant, Transfer] {
            assert!(!permits(Role::Viewer, "vic", &mine, action), "{action:?}");
        }
        let shared = WorkspaceAccess {
            owner: "ada".into(),
            members: vec!["vic".into()],
            writers: Vec::new(),
        };
        for action in [Use, Change, Keep, Grant, Transfer] {
            assert!(!permits(Role::Viewer, "vic", &shared, action), "{action:?}");
        }
        assert!(may_create(Role::Member) && !may_create(Role::Viewer));
    }

    #[test]
    fn records_round_trip() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let book = AccessBook::new(db.open_tree("workspace_access").unwrap());
        let id = Uuid::new_v4();
        assert_eq!(book.get(id).unwrap(), None);
        book.put(id, &access()).unwrap();
        assert_eq!(book.get(id).unwrap(), Some(access()));
        book.remove(id).unwrap();
        assert_eq!(book.get(id).unwrap(), None);
        db.open_tree("workspace_access")
            .unwrap()
            .insert(id.as_bytes(), b"\x92\x01".as_slice())
            .unwrap();
        assert!(matches!(book.get(id), Err(AccessError::Corrupt { .. })));
    }
}
