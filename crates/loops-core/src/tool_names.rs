//! The names of the built-in tools and the defaults each kind of run is offered: what a
//! config's `tools:` is checked against (loop configs, agent jobs, MCP server entries), kept
//! apart from the tools themselves so that checking a config never needs the agent.

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
