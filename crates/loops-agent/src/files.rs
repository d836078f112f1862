//! The file tools a prompt loop offers the model: read, list, search, write, edit and
//! append. Every path goes through the [`Sandbox`] first; every write is atomic, so a
//! crash leaves the old file or the new one, never half of one.
//!
//! Errors go back to the model as the tool's result, so each says what was wrong and
//! what to do instead, and none repeats the contents of a file the model may not read.

use super::model::ToolSpec;
use super::sandbox::{Access, Sandbox, SandboxError};
use super::{ToolError, ToolOk, ToolResult};
use serde_json::{json, Map, Value};
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

/// The most text `read_file` returns at once.
pub const READ_LIMIT: usize = 256 * 1024;
/// The most entries `list_files` returns.
pub const LIST_LIMIT: usize = 2_000;
/// The most matching lines `search_files` returns.
pub const SEARCH_LIMIT: usize = 500;
/// Larger files are skipped by `search_files` (logs and data, not notes).
pub const SEARCH_MAX_FILE: u64 = 2 * 1024 * 1024;
/// Larger files are not rewritten by `edit_file` and `append_file`, which hold the whole
/// file in memory to write it atomically.
pub const REWRITE_MAX_FILE: u64 = 16 * 1024 * 1024;
/// A matching line longer than this is shortened in `search_files` output.
const MATCH_LINE_CHARS: usize = 300;

/// What went wrong in a file tool; turned into a [`ToolError`] for the model.
#[derive(Debug, thiserror::Error)]
pub enum FileToolError {
    #[error("{tool}: {message}")]
    Args { tool: &'static str, message: String },
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error("{path} does not exist; {hint}")]
    NotFound { path: String, hint: &'static str },
    #[error("{path} is a folder; use list_files to see what is in it")]
    IsDir { path: String },
    #[error("{path} is a file, not a folder; use read_file to read it")]
    NotDir { path: String },
    #[error("{path} is not a regular file (a pipe, socket or device); the file tools work on plain files")]
    Special { path: String },
    #[error("{path} is not a text file (it is not UTF-8 text); the file tools only handle text")]
    Binary { path: String },
    #[error("{path} is {size} bytes, more than {tool} handles ({limit} bytes); {hint}")]
    TooLarge {
        tool: &'static str,
        path: String,
        size: u64,
        limit: u64,
        hint: &'static str,
    },
    #[error("{0}")]
    Range(String),
    #[error(
        "search_files: the pattern is not a valid regular expression (Rust regex syntax): {0}"
    )]
    Regex(String),
    #[error("search_files: the glob {glob:?} is not valid: {why}; use a glob like *.md or domains/**/state.md")]
    Glob { glob: String, why: &'static str },
    #[error("edit_file: old_text is empty; copy the exact text to replace from the file (to add text at the end, use append_file)")]
    EmptyOldText,
    #[error("old_text was not found in {path}; read the file and copy the text exactly")]
    TextNotFound { path: String },
    #[error(
        "old_text occurs {count} times in {path}; include more surrounding lines so it is unique"
    )]
    NotUnique { path: String, count: usize },
    #[error("could not {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
}

impl From<FileToolError> for ToolError {
    fn from(e: FileToolError) -> Self {
        ToolError::new(e.to_string())
    }
}

type Res<T> = Result<T, FileToolError>;

/// Reads a text file, or a range of its lines.
pub fn read_file(sb: &Sandbox, input: &Value) -> ToolResult {
    read_file_inner(sb, input).map_err(ToolError::from)
}

/// Lists a folder's entries, optionally the whole tree below it.
pub fn list_files(sb: &Sandbox, input: &Value) -> ToolResult {
    list_files_inner(sb, input).map_err(ToolError::from)
}

/// Searches text files for lines matching a regular expression.
pub fn search_files(sb: &Sandbox, input: &Value) -> ToolResult {
    search_files_inner(sb, input).map_err(ToolError::from)
}

/// Creates or replaces a file.
pub fn write_file(sb: &Sandbox, input: &Value) -> ToolResult {
    write_file_inner(sb, input).map_err(ToolError::from)
}

/// Replaces one exact, unique piece of text in a file.
pub fn edit_file(sb: &Sandbox, input: &Value) -> ToolResult {
    edit_file_inner(sb, input).map_err(ToolError::from)
}

/// Adds text at the end of a file, creating it if needed.
pub fn append_file(sb: &Sandbox, input: &Value) -> ToolResult {
    append_file_inner(sb, input).map_err(ToolError::from)
}

/// The six tools as offered to the model.
pub fn specs() -> Vec<ToolSpec> {
    let spec = |name: &str, description: &str, input_schema: Value| ToolSpec {
        name: name.to_string(),
        description: description.to_string(),
        input_schema,
    };
    vec![
        spec(
            "read_file",
            "Read a text file in the workspace. Paths are relative to the workspace root, such as \
             domains/my-loop/state.md. Give start_line and end_line (numbered from 1, both included) \
             to read only part of a long file; the answer then starts with a line saying which lines \
             of how many it shows. At most 256 KiB comes back at once: a longer file ends with a note \
             saying which start_line to read on from. For a folder, use list_files.",
            json!({
                "type": "object",
                "properties": {
                    "path": {"type": "string", "description": "File path relative to the workspace root, e.g. domains/my-loop/state.md"},
                    "start_line": {"type": "integer", "minimum": 1, "description": "First line to read (1-based). Default: 1"},
                    "end_line": {"type": "integer", "minimum": 1, "description": "Last line to read, included. Default: the end of the file"}
                },
                "required": ["path"],
                "additionalProperties": false
            }),
        ),
        spec(
            "list_files",
            "List the files and folders in a workspace folder, one per line, as paths relative to the \
             workspace root (folders end with /), sorted. Leave out path for the workspace root. With \
             recursive: true, the whole tree below the folder is listed (symbolic links are not \
             followed). At most 2000 entries come back; list a subfolder to see more. Files this \
             loop may not read are left out.",
            json!({
                "type": "object",
                "properties": {
                    "path": {"type": "string", "description": "Folder relative to the workspace root, e.g. domains/my-loop. Default: the root"},
                    "recursive": {"type": "boolean", "description": "List everything below the folder, not only its direct entries. Default: false"}
                },
                "additionalProperties": false
            }),
        ),
        spec(
            "search_files",
            "Search the text files under a workspace folder for lines matching a regular expression \
             (Rust regex syntax: use (?i) for case-insensitive, \\b for word boundaries, escape . ( [ \
             with a backslash to match them literally). Each match comes back as path:line: text. \
             Narrow the search with path (a folder or one file) and glob (a file-name pattern such \
             as *.md, or a path pattern such as domains/**/state.md). At most 500 matches come back; \
             files over 2 MiB and binary files are skipped.",
            json!({
                "type": "object",
                "properties": {
                    "pattern": {"type": "string", "description": "Regular expression matched against each line"},
                    "path": {"type": "string", "description": "Folder or file to search, relative to the workspace root. Default: the root"},
                    "glob": {"type": "string", "description": "Only files matching this glob: *.md (file names), or domains/**/*.md (paths from the root)"}
                },
                "required": ["pattern"],
                "additionalProperties": false
            }),
        ),
        spec(
            "write_file",
            "Create a file, or replace all of an existing file's content, with the given text. \
             Missing parent folders are created. The path is relative to the workspace root, such \
             as domains/my-loop/state.md. An isolated loop may write only under domains/<its \
             name>/ and drafts/<its name>/, and create new .md handoffs directly in inbox/. To \
             change part of a file, use edit_file; to add at its end, use append_file.",
            json!({
                "type": "object",
                "properties": {
                    "path": {"type": "string", "description": "File path relative to the workspace root"},
                    "content": {"type": "string", "description": "The complete new content of the file"}
                },
                "required": ["path", "content"],
                "additionalProperties": false
            }),
        ),
        spec(
            "edit_file",
            "Replace one piece of text in a file with another. old_text must match the file \
             exactly (spaces, indentation and line breaks included) and occur exactly once: read \
             the file first and copy the text, adding neighbouring lines if it is not unique. An \
             empty new_text deletes old_text.",
            json!({
                "type": "object",
                "properties": {
                    "path": {"type": "string", "description": "File path relative to the workspace root"},
                    "old_text": {"type": "string", "description": "The exact text to replace; must occur exactly once"},
                    "new_text": {"type": "string", "description": "The text to put in its place (may be empty)"}
                },
                "required": ["path", "old_text", "new_text"],
                "additionalProperties": false
            }),
        ),
        spec(
            "append_file",
            "Add text at the end of a file, creating the file (and its folders) if it does not \
             exist. A line break is put between the old content and the new one when the old \
             content did not end with one. Good for logs and running notes.",
            json!({
                "type": "object",
                "properties": {
                    "path": {"type": "string", "description": "File path relative to the workspace root"},
                    "content": {"type": "string", "description": "The text to add at the end"}
                },
                "required": ["path", "content"],
                "additionalProperties": false
            }),
        ),
    ]
}

// ---------------------------------------------------------------------------------------
// Arguments

/// A tool's input object, read with errors that name the tool and the argument.
struct Args<'a> {
    tool: &'static str,
    map: &'a Map<String, Value>,
}

impl<'a> Args<'a> {
    fn new(tool: &'static str, input: &'a Value) -> Res<Self> {
        match input.as_object() {
            Some(map) => Ok(Args { tool, map }),
            None => Err(FileToolError::Args {
                tool,
                message: format!(
                    "the input must be a JSON object of named arguments, not {}",
                    kind(input)
                ),
            }),
        }
    }

    fn err(&self, message: String) -> FileToolError {
        FileToolError::Args {
            tool: self.tool,
            message,
        }
    }

    /// A present, non-null argument.
    fn get(&self, name: &str) -> Option<&'a Value> {
        self.map.get(name).filter(|v| !v.is_null())
    }

    fn str(&self, name: &str) -> Res<&'a str> {
        match self.get(name) {
            Some(v) => v
                .as_str()
                .ok_or_else(|| self.err(format!("`{name}` must be a string, not {}", kind(v)))),
            None => {
                let given: Vec<&str> = self.map.keys().map(String::as_str).collect();
                Err(self.err(if given.is_empty() {
                    format!("`{name}` is required")
                } else {
                    format!(
                        "`{name}` is required (the arguments given were: {})",
                        given.join(", ")
                    )
                }))
            }
        }
    }

    fn opt_str(&self, name: &str) -> Res<Option<&'a str>> {
        match self.get(name) {
            Some(_) => self.str(name).map(Some),
            None => Ok(None),
        }
    }

    fn opt_bool(&self, name: &str) -> Res<Option<bool>> {
        match self.get(name) {
            Some(v) => v.as_bool().map(Some).ok_or_else(|| {
                self.err(format!("`{name}` must be true or false, not {}", kind(v)))
            }),
            None => Ok(None),
        }
    }

    fn opt_line(&self, name: &str) -> Res<Option<usize>> {
        let Some(v) = self.get(name) else {
            return Ok(None);
        };
        match v.as_u64().and_then(|n| usize::try_from(n).ok()) {
            Some(0) => Err(self.err(format!(
                "`{name}` must be 1 or more: lines are numbered from 1"
            ))),
            Some(n) => Ok(Some(n)),
            None => Err(self.err(format!(
                "`{name}` must be a whole line number (1 or more), not {}",
                kind(v)
            ))),
        }
    }
}

/// How a JSON value is described in an error (its type, and short values themselves).
fn kind(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) if s.chars().count() <= 40 => format!("the string {s:?}"),
        Value::String(_) => "a string".into(),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

// ---------------------------------------------------------------------------------------
// read_file

fn read_file_inner(sb: &Sandbox, input: &Value) -> Res<ToolOk> {
    let a = Args::new("read_file", input)?;
    let path = a.str("path")?;
    let start = a.opt_line("start_line")?;
    let end = a.opt_line("end_line")?;
    if let (Some(s), Some(e)) = (start, end) {
        if e < s {
            return Err(FileToolError::Range(format!(
                "read_file: end_line ({e}) is before start_line ({s}); give start_line <= end_line"
            )));
        }
    }
    let abs = sb.resolve(path, Access::Read)?;
    let shown = sb.relative(&abs);
    let file = open_regular(sb, &abs, &shown, "use list_files to see what is there")?;
    let from = start.unwrap_or(1);
    let to = end.unwrap_or(usize::MAX);
    let scan = scan_lines(file, from, to, READ_LIMIT).map_err(|e| match e {
        ScanError::Binary => FileToolError::Binary {
            path: shown.clone(),
        },
        ScanError::Io(source) => FileToolError::Io {
            action: "read",
            path: shown.clone(),
            source,
        },
    })?;

    if scan.total == 0 {
        return Ok(ToolOk::text(format!("[{shown} is empty]")));
    }
    let ranged = start.is_some() || end.is_some();
    if from > scan.total {
        return Err(FileToolError::Range(format!(
            "read_file: {shown} has {} lines, so start_line {from} is past its end; read from start_line 1 to {}",
            scan.total, scan.total
        )));
    }
    let mut text = scan.text;
    let shown_lines = match (scan.cut, scan.last_whole) {
        (false, _) => format!("lines {from}-{} of {}", to.min(scan.total), scan.total),
        (true, Some(last)) => format!("lines {from}-{last} of {}", scan.total),
        (true, None) => format!("the start of line {from} of {}", scan.total),
    };
    if ranged {
        text = format!("[{shown}: {shown_lines}]\n{text}");
    }
    if scan.cut {
        if !text.ends_with('\n') {
            text.push('\n');
        }
        let next = match scan.last_whole {
            Some(last) => format!(
                "read the rest with start_line={} (and an end_line to take it in parts)",
                last + 1
            ),
            None => format!(
                "line {from} alone is longer than that, so only its start is shown; search_files can find text inside it"
            ),
        };
        text.push_str(&format!(
            "[output capped at 256 KiB: this is {shown_lines} of {shown}; {next}]"
        ));
    }
    Ok(ToolOk::text(text))
}

/// What [`scan_lines`] kept of a file.
struct Scan {
    /// The wanted lines, as far as the budget allowed.
    text: String,
    /// How many lines the file has.
    total: usize,
    /// The last wanted line kept whole.
    last_whole: Option<usize>,
    /// Whether the budget ran out before the wanted lines did.
    cut: bool,
}

enum ScanError {
    Binary,
    Io(io::Error),
}

impl From<io::Error> for ScanError {
    fn from(e: io::Error) -> Self {
        ScanError::Io(e)
    }
}

/// Reads lines `from..=to` (1-based) of a UTF-8 file, keeping at most `budget` bytes and
/// cutting at a line boundary when it can. The file is read to its end in bounded pieces,
/// so the line count is exact and a huge file (or one huge line) never sits in memory.
fn scan_lines(r: impl Read, from: usize, to: usize, budget: usize) -> Result<Scan, ScanError> {
    const PIECE: u64 = 64 * 1024;
    let mut reader = BufReader::with_capacity(PIECE as usize, r);
    let mut piece: Vec<u8> = Vec::new();
    let mut carry: Vec<u8> = Vec::new();
    let mut line = 1usize;
    let mut line_open = false;
    let mut line_start = 0usize;
    let mut out = String::new();
    let mut last_whole = None;
    let mut cut = false;
    loop {
        piece.clear();
        piece.append(&mut carry);
        let n = (&mut reader).take(PIECE).read_until(b'\n', &mut piece)?;
        if n == 0 {
            if !piece.is_empty() {
                // A multi-byte character the file ends in the middle of.
                return Err(ScanError::Binary);
            }
            break;
        }
        // A piece may end inside a character; its first bytes wait for the next piece.
        let valid = match std::str::from_utf8(&piece) {
            Ok(_) => piece.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => return Err(ScanError::Binary),
        };
        carry = piece.split_off(valid);
        let text = std::str::from_utf8(&piece).map_err(|_| ScanError::Binary)?;
        if text.contains('\0') {
            return Err(ScanError::Binary);
        }
        if text.is_empty() {
            continue;
        }
        let ends_line = text.ends_with('\n');
        if !line_open {
            line_start = out.len();
            line_open = true;
        }
        if (from..=to).contains(&line) && !cut {
            let room = budget - out.len();
            if text.len() <= room {
                out.push_str(text);
            } else {
                cut = true;
                if line_start > 0 {
                    // Drop the partial line: the model reads on from the next whole one.
                    out.truncate(line_start);
                } else {
                    out.push_str(&text[..floor_boundary(text, room)]);
                }
            }
        }
        if ends_line {
            if (from..=to).contains(&line) && !cut {
                last_whole = Some(line);
            }
            line += 1;
            line_open = false;
        }
    }
    let total = if line_open { line } else { line - 1 };
    if line_open && (from..=to).contains(&line) && !cut {
        last_whole = Some(line);
    }
    Ok(Scan {
        text: out,
        total,
        last_whole,
        cut,
    })
}

/// The largest char boundary of `s` at or below `i`.
fn floor_boundary(s: &str, i: usize) -> usize {
    let mut i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Opens a regular file for reading beneath the workspace root, with the model-facing
/// error for anything else. The kind is checked again on the open file: what was checked
/// by name may have been swapped since.
fn open_regular(sb: &Sandbox, abs: &Path, shown: &str, missing_hint: &'static str) -> Res<File> {
    check_regular(abs, shown, missing_hint)?;
    let io_err = |source| FileToolError::Io {
        action: "open",
        path: shown.to_string(),
        source,
    };
    let f = sb.open_read(abs).map_err(io_err)?;
    match f.metadata() {
        Ok(md) if md.is_file() => Ok(f),
        Ok(_) => Err(FileToolError::Special {
            path: shown.to_string(),
        }),
        Err(source) => Err(io_err(source)),
    }
}

/// The whole of a regular file, read beneath the workspace root.
fn read_all(sb: &Sandbox, abs: &Path, shown: &str) -> Res<Vec<u8>> {
    let mut f = open_regular(sb, abs, shown, "")?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes)
        .map_err(|source| FileToolError::Io {
            action: "read",
            path: shown.to_string(),
            source,
        })?;
    Ok(bytes)
}

/// The metadata of a regular file; a folder, a pipe or a missing file is an error.
fn check_regular(abs: &Path, shown: &str, missing_hint: &'static str) -> Res<fs::Metadata> {
    match fs::metadata(abs) {
        Ok(md) if md.is_file() => Ok(md),
        Ok(md) if md.is_dir() => Err(FileToolError::IsDir {
            path: shown.to_string(),
        }),
        Ok(_) => Err(FileToolError::Special {
            path: shown.to_string(),
        }),
        Err(e) if is_missing(&e) => Err(FileToolError::NotFound {
            path: shown.to_string(),
            hint: missing_hint,
        }),
        Err(source) => Err(FileToolError::Io {
            action: "open",
            path: shown.to_string(),
            source,
        }),
    }
}

fn is_missing(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
        || rustix::io::Errno::from_io_error(e) == Some(rustix::io::Errno::NOTDIR)
}

// ---------------------------------------------------------------------------------------
// list_files

fn list_files_inner(sb: &Sandbox, input: &Value) -> Res<ToolOk> {
    let a = Args::new("list_files", input)?;
    let path = root_if_empty(a.opt_str("path")?);
    let recursive = a.opt_bool("recursive")?.unwrap_or(false);
    let abs = sb.resolve(path, Access::Read)?;
    let shown = sb.relative(&abs);
    match fs::metadata(&abs) {
        Ok(md) if md.is_dir() => {}
        Ok(_) => return Err(FileToolError::NotDir { path: shown }),
        Err(e) if is_missing(&e) => {
            return Err(FileToolError::NotFound {
                path: shown,
                hint: "use list_files without a path to see the workspace root",
            })
        }
        Err(source) => {
            return Err(FileToolError::Io {
                action: "list",
                path: shown,
                source,
            })
        }
    }

    let mut entries: Vec<String> = Vec::new();
    let mut more = false;
    let mut walk = walkdir::WalkDir::new(&abs)
        .min_depth(1)
        .max_depth(if recursive { usize::MAX } else { 1 })
        .follow_links(false)
        .sort_by_file_name()
        .into_iter();
    while let Some(entry) = walk.next() {
        // An unreadable folder deep in the tree is not worth failing the whole listing.
        let Ok(entry) = entry else { continue };
        let rel = sb.relative(entry.path());
        if !visible(sb, &entry, &rel) {
            if entry.file_type().is_dir() {
                walk.skip_current_dir();
            }
            continue;
        }
        if entries.len() == LIST_LIMIT {
            more = true;
            break;
        }
        let is_dir = entry.file_type().is_dir()
            || (entry.path_is_symlink() && fs::metadata(entry.path()).is_ok_and(|m| m.is_dir()));
        entries.push(if is_dir { format!("{rel}/") } else { rel });
    }
    entries.sort();

    if entries.is_empty() {
        return Ok(ToolOk::text(format!("[{shown} is empty]")));
    }
    let mut text = entries.join("\n");
    if more {
        text.push_str(&format!(
            "\n[stopped at {LIST_LIMIT} entries; list a subfolder{} to see the rest]",
            if recursive {
                ", or leave out recursive,"
            } else {
                ""
            }
        ));
    }
    Ok(ToolOk::text(text))
}

/// Whether a walked entry may be shown: never `.git`, and nothing the scope may not read
/// (a symbolic link leading outside included).
fn visible(sb: &Sandbox, entry: &walkdir::DirEntry, rel: &str) -> bool {
    !entry.file_name().eq_ignore_ascii_case(".git") && sb.resolve(rel, Access::Read).is_ok()
}

fn root_if_empty(path: Option<&str>) -> &str {
    match path {
        Some(p) if !p.trim().is_empty() => p,
        _ => ".",
    }
}

// ---------------------------------------------------------------------------------------
// search_files

fn search_files_inner(sb: &Sandbox, input: &Value) -> Res<ToolOk> {
    let a = Args::new("search_files", input)?;
    let pattern = a.str("pattern")?;
    let path = root_if_empty(a.opt_str("path")?);
    let glob = a.opt_str("glob")?.filter(|g| !g.trim().is_empty());
    let re = regex::Regex::new(pattern).map_err(|e| FileToolError::Regex(e.to_string()))?;
    let glob = glob.map(FileGlob::new).transpose()?;
    let abs = sb.resolve(path, Access::Read)?;
    let shown = sb.relative(&abs);
    let md = fs::metadata(&abs).map_err(|e| {
        if is_missing(&e) {
            FileToolError::NotFound {
                path: shown.clone(),
                hint: "use list_files to see what is there",
            }
        } else {
            FileToolError::Io {
                action: "search",
                path: shown.clone(),
                source: e,
            }
        }
    })?;

    let mut hits = Hits::default();
    if md.is_file() {
        hits.search(sb, &re, &abs, &shown, md.len());
    } else {
        hits.search_tree(sb, &re, &abs, glob.as_ref());
    }
    let Hits {
        lines: out,
        skipped_large,
        capped,
    } = hits;

    let mut text = if out.is_empty() {
        format!("no matches for {pattern:?} in {shown}")
    } else {
        out.join("\n")
    };
    if capped {
        text.push_str(&format!(
            "\n[stopped at {SEARCH_LIMIT} matches; narrow the pattern, the path or the glob to see the rest]"
        ));
    }
    if skipped_large > 0 {
        text.push_str(&format!(
            "\n[skipped {skipped_large} file(s) over 2 MiB; read_file with start_line/end_line reads them in parts]"
        ));
    }
    Ok(ToolOk::text(text))
}

/// The `glob` of a search: a file-name pattern (`*.md`), or a path pattern from the
/// root when it holds a `/` (`domains/**/state.md`).
struct FileGlob {
    re: regex::Regex,
    on_path: bool,
}

impl FileGlob {
    fn new(glob: &str) -> Res<FileGlob> {
        let re = super::glob::glob_regex(glob).map_err(|why| FileToolError::Glob {
            glob: glob.to_string(),
            why,
        })?;
        Ok(FileGlob {
            re,
            on_path: glob.contains('/'),
        })
    }

    fn matches(&self, entry: &walkdir::DirEntry, rel: &str) -> bool {
        let subject = if self.on_path {
            rel
        } else {
            entry.file_name().to_str().unwrap_or("")
        };
        self.re.is_match(subject)
    }
}

/// What a search found so far.
#[derive(Default)]
struct Hits {
    lines: Vec<String>,
    skipped_large: usize,
    capped: bool,
}

impl Hits {
    /// Searches the text files below the folder `abs` (those `glob` matches), in the
    /// order of the walk.
    fn search_tree(
        &mut self,
        sb: &Sandbox,
        re: &regex::Regex,
        abs: &Path,
        glob: Option<&FileGlob>,
    ) {
        // Files are searched as the walk finds them, so a capped search stops walking too.
        let mut walk = walkdir::WalkDir::new(abs)
            .min_depth(1)
            .follow_links(false)
            .sort_by_file_name()
            .into_iter();
        while let Some(entry) = walk.next() {
            if self.capped {
                break;
            }
            let Ok(entry) = entry else { continue };
            let rel = sb.relative(entry.path());
            if !visible(sb, &entry, &rel) {
                if entry.file_type().is_dir() {
                    walk.skip_current_dir();
                }
                continue;
            }
            if !entry.file_type().is_file() {
                continue;
            }
            if glob.is_some_and(|g| !g.matches(&entry, &rel)) {
                continue;
            }
            let len = entry.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
            // Read by its real name beneath the root: the walk's name may be stale.
            if let Ok(real) = sb.resolve(&rel, Access::Read) {
                self.search(sb, re, &real, &rel, len);
            }
        }
    }

    /// Adds one file's matching lines; files too large, unreadable or not text are
    /// passed over (a search answers about the text files it could read).
    fn search(&mut self, sb: &Sandbox, re: &regex::Regex, file: &Path, rel: &str, len: u64) {
        if len > SEARCH_MAX_FILE {
            self.skipped_large += 1;
            return;
        }
        let Ok(f) = sb.open_read(file) else { return };
        let mut bytes = Vec::new();
        if f.take(SEARCH_MAX_FILE).read_to_end(&mut bytes).is_err() {
            return;
        }
        let Ok(text) = String::from_utf8(bytes) else {
            return;
        };
        if text.contains('\0') {
            return;
        }
        for (i, line) in text.lines().enumerate() {
            if re.is_match(line) {
                if self.lines.len() == SEARCH_LIMIT {
                    self.capped = true;
                    return;
                }
                self.lines.push(format!("{rel}:{}: {}", i + 1, clip(line)));
            }
        }
    }
}

/// A matching line as shown: long lines (minified data) shortened.
fn clip(line: &str) -> String {
    let line = line.trim_end_matches('\r');
    match line.char_indices().nth(MATCH_LINE_CHARS) {
        Some((i, _)) => format!("{}…", &line[..i]),
        None => line.to_string(),
    }
}

// ---------------------------------------------------------------------------------------
// write_file, edit_file, append_file

fn write_file_inner(sb: &Sandbox, input: &Value) -> Res<ToolOk> {
    let a = Args::new("write_file", input)?;
    let path = a.str("path")?;
    let content = a.str("content")?;
    let abs = sb.resolve(path, Access::Write)?;
    let shown = sb.relative(&abs);
    match fs::metadata(&abs) {
        Ok(md) if md.is_dir() => return Err(FileToolError::IsDir { path: shown }),
        Ok(md) if !md.is_file() => return Err(FileToolError::Special { path: shown }),
        _ => {}
    }
    replace_file(sb, &abs, content.as_bytes(), &shown)?;
    Ok(ToolOk {
        text: format!("wrote {} bytes to {shown}", content.len()),
        wrote: vec![abs],
    })
}

fn edit_file_inner(sb: &Sandbox, input: &Value) -> Res<ToolOk> {
    let a = Args::new("edit_file", input)?;
    let path = a.str("path")?;
    let old_text = a.str("old_text")?;
    let new_text = a.str("new_text")?;
    if old_text.is_empty() {
        return Err(FileToolError::EmptyOldText);
    }
    let abs = sb.resolve(path, Access::Write)?;
    let shown = sb.relative(&abs);
    let md = check_regular(
        &abs,
        &shown,
        "use write_file to create it, or list_files to find the right name",
    )?;
    too_large("edit_file", &md, &shown)?;
    let bytes = read_all(sb, &abs, &shown)?;
    let text = String::from_utf8(bytes).map_err(|_| FileToolError::Binary {
        path: shown.clone(),
    })?;
    match occurrences(&text, old_text) {
        0 => return Err(FileToolError::TextNotFound { path: shown }),
        1 => {}
        count => return Err(FileToolError::NotUnique { path: shown, count }),
    }
    if old_text == new_text {
        return Ok(ToolOk::text(format!(
            "{shown} is unchanged: old_text and new_text are the same"
        )));
    }
    let edited = text.replacen(old_text, new_text, 1);
    replace_file(sb, &abs, edited.as_bytes(), &shown)?;
    Ok(ToolOk {
        text: format!(
            "edited {shown}: replaced {} line(s) with {} line(s); it is now {} bytes",
            line_count(old_text),
            line_count(new_text),
            edited.len()
        ),
        wrote: vec![abs],
    })
}

fn append_file_inner(sb: &Sandbox, input: &Value) -> Res<ToolOk> {
    let a = Args::new("append_file", input)?;
    let path = a.str("path")?;
    let content = a.str("content")?;
    if content.is_empty() {
        return Err(a.err("`content` is empty, so there is nothing to append".into()));
    }
    let abs = sb.resolve(path, Access::Write)?;
    let shown = sb.relative(&abs);
    let (mut bytes, created) = match check_regular(&abs, &shown, "") {
        Ok(md) => {
            too_large("append_file", &md, &shown)?;
            (read_all(sb, &abs, &shown)?, false)
        }
        Err(FileToolError::NotFound { .. }) => (Vec::new(), true),
        Err(e) => return Err(e),
    };
    if !bytes.is_empty() && !bytes.ends_with(b"\n") {
        bytes.push(b'\n');
    }
    bytes.extend_from_slice(content.as_bytes());
    replace_file(sb, &abs, &bytes, &shown)?;
    Ok(ToolOk {
        text: format!(
            "appended {} bytes to {shown}{}",
            content.len(),
            if created { " (a new file)" } else { "" }
        ),
        wrote: vec![abs],
    })
}

fn too_large(tool: &'static str, md: &fs::Metadata, shown: &str) -> Res<()> {
    if md.len() > REWRITE_MAX_FILE {
        return Err(FileToolError::TooLarge {
            tool,
            path: shown.to_string(),
            size: md.len(),
            limit: REWRITE_MAX_FILE,
            hint: "write a new, smaller file instead",
        });
    }
    Ok(())
}

/// Replaces a file atomically beneath the workspace root. It keeps its read and write
/// permissions but loses any exec bit (see [`Sandbox::write`]).
fn replace_file(sb: &Sandbox, abs: &Path, bytes: &[u8], shown: &str) -> Res<()> {
    sb.write(abs, bytes).map_err(|source| FileToolError::Io {
        action: "write",
        path: shown.to_string(),
        source,
    })
}

/// How many times `needle` occurs in `hay`, overlapping ones included (in "aaa", "aa"
/// occurs twice: a replacement would be ambiguous).
fn occurrences(hay: &str, needle: &str) -> usize {
    let step = needle.chars().next().map_or(1, char::len_utf8);
    let mut count = 0;
    let mut from = 0;
    while let Some(i) = hay.get(from..).and_then(|h| h.find(needle)) {
        count += 1;
        from += i + step;
    }
    count
}

fn line_count(s: &str) -> usize {
    s.lines().count().max(1)
}
