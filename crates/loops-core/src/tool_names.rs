//! The names of the built-in tools and the defaults each kind of run is offered, and
//! [`check`], the one judge of an entry of a `tools:` list (a loop's config.yaml, an agent
//! job's params, the tool kit of a run), kept apart from the tools themselves so that
//! checking a config never needs the agent.

/// Every tool the runner knows.
pub const KNOWN: &[&str] = &[
    "read_file",
    "list_files",
    "search_files",
    "write_file",
    "edit_file",
    "append_file",
    "save_draft",
    "create_handoff",
    "complete_handoff",
    "tick_item",
    "post",
    "deliver",
    "http_get",
    "shell",
    "call_tool",
    "finish",
];

/// What an isolated loop is offered when its config.yaml has no `tools:`. `http_get`
/// and `shell` are never on by default: they reach outside the workspace.
pub const ISOLATED_DEFAULT: &[&str] = &[
    "read_file",
    "list_files",
    "search_files",
    "write_file",
    "edit_file",
    "append_file",
    "save_draft",
    "create_handoff",
    "finish",
];

/// What the main session is offered when loops.yaml `main.tools` is unset.
pub const MAIN_DEFAULT: &[&str] = &[
    "read_file",
    "list_files",
    "search_files",
    "write_file",
    "edit_file",
    "append_file",
    "create_handoff",
    "complete_handoff",
    "tick_item",
    "post",
    "finish",
];

/// Whether `name` is a built-in tool.
pub fn is_known(name: &str) -> bool {
    KNOWN.contains(&name)
}

/// An entry of `tools:` that names an MCP server rather than a built-in tool:
/// `Some((server, None))` for `server`, `Some((server, Some(tool)))` for `server.tool`.
pub fn mcp_reference(entry: &str) -> Option<(&str, Option<&str>)> {
    if is_known(entry) {
        return None;
    }
    match entry.split_once('.') {
        Some((server, tool)) if !server.is_empty() && !tool.is_empty() => {
            Some((server, Some(tool)))
        }
        Some(_) => None,
        None => Some((entry, None)),
    }
}

/// Whether `name` can name an MCP server: it becomes part of its tools' names
/// (`name__tool`), so letters, digits, `_` and `-` only.
pub fn valid_server_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// What one entry of a `tools:` list names, by the one set of rules every list is checked
/// with (a loop's config.yaml, an agent job's params, the tool kit a run is given).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolEntry<'a> {
    /// A built-in tool.
    Builtin,
    /// An MCP server's tools: all of them (`server`) or one (`server.tool`).
    Server {
        server: &'a str,
        tool: Option<&'a str>,
    },
    /// `server.tool` naming a server loops.yaml does not have (and the closest it has).
    MissingServer {
        server: &'a str,
        suggestion: Option<&'a str>,
    },
    /// A near miss of a built-in tool or of a server: a typo of it.
    Typo { suggestion: &'a str },
    /// No tool or server this runner knows.
    Unknown,
}

/// Judges one entry of a `tools:` list against the built-in tools and `servers`, the MCP
/// servers of loops.yaml; `None` when those are not known yet (an agent job is checked
/// when it is submitted, its servers when it runs), where a name shaped like a server
/// reference counts as one unless it is a near miss of a built-in tool.
pub fn check<'a>(entry: &'a str, servers: Option<&[&'a str]>) -> ToolEntry<'a> {
    if is_known(entry) {
        return ToolEntry::Builtin;
    }
    let reference = mcp_reference(entry);
    // Not a usable reference (`x.`): judged as the unknown name it is.
    let (server, tool) = reference.unwrap_or((entry, None));
    let mut candidates: Vec<&str> = KNOWN.to_vec();
    match servers {
        Some(names) if names.contains(&server) => return ToolEntry::Server { server, tool },
        Some(names) if tool.is_some() => {
            return ToolEntry::MissingServer {
                server,
                suggestion: crate::diag::near_miss(server, names),
            }
        }
        Some(names) => candidates.extend(names.iter().copied()),
        None => {
            let typo = crate::diag::near_miss(entry, KNOWN).is_some();
            if reference.is_some() && valid_server_name(server) && !typo {
                return ToolEntry::Server { server, tool };
            }
        }
    }
    match crate::diag::near_miss(entry, &candidates) {
        Some(k) if k != entry => ToolEntry::Typo { suggestion: k },
        _ => ToolEntry::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_set_of_rules_with_and_without_the_servers() {
        let servers = ["github", "everything"];
        let with = |e| check(e, Some(&servers));
        assert_eq!(with("read_file"), ToolEntry::Builtin);
        assert_eq!(
            with("github.create_issue"),
            ToolEntry::Server {
                server: "github",
                tool: Some("create_issue")
            }
        );
        assert_eq!(
            with("gitub.x"),
            ToolEntry::MissingServer {
                server: "gitub",
                suggestion: Some("github")
            }
        );
        assert_eq!(
            with("finsh"),
            ToolEntry::Typo {
                suggestion: "finish"
            }
        );
        assert_eq!(
            with("everythin"),
            ToolEntry::Typo {
                suggestion: "everything"
            }
        );
        assert_eq!(with("web_search"), ToolEntry::Unknown);
        // Servers not known yet: a server-shaped name is taken for one, a typo is not.
        assert_eq!(
            check("web_search", None),
            ToolEntry::Server {
                server: "web_search",
                tool: None
            }
        );
        assert_eq!(
            check("Read_File", None),
            ToolEntry::Typo {
                suggestion: "read_file"
            }
        );
        assert_eq!(check("bad name", None), ToolEntry::Unknown);
        assert_eq!(check("x.", None), ToolEntry::Unknown);
    }
}
