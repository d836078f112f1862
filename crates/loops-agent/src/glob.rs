//! The globs of `search_files` and of a loop's `reads:`.

/// A glob as an anchored regex: `*` and `?` stay inside one folder, `**` crosses
/// folders, `{a,b}` is either, `[abc]` and `[!abc]` are character classes.
/// `Err` says what is wrong with the glob.
pub(crate) fn glob_regex(glob: &str) -> Result<regex::Regex, &'static str> {
    let bad = |why: &'static str| why;
    let g = glob.strip_prefix("./").unwrap_or(glob);
    let mut re = String::from("^");
    let mut chars = g.chars().peekable();
    let mut braces = 0usize;
    while let Some(c) = chars.next() {
        match c {
            '*' if chars.peek() == Some(&'*') => {
                chars.next();
                if chars.peek() == Some(&'/') {
                    chars.next();
                    re.push_str("(?:.*/)?");
                } else {
                    re.push_str(".*");
                }
            }
            '*' => re.push_str("[^/]*"),
            '?' => re.push_str("[^/]"),
            '{' => {
                braces += 1;
                re.push_str("(?:");
            }
            ',' if braces > 0 => re.push('|'),
            '}' if braces > 0 => {
                braces -= 1;
                re.push(')');
            }
            '[' => {
                let mut class = String::from("[");
                if chars.peek() == Some(&'!') || chars.peek() == Some(&'^') {
                    chars.next();
                    class.push('^');
                }
                let mut closed = false;
                let mut first = true;
                for k in chars.by_ref() {
                    if k == ']' && !first {
                        closed = true;
                        break;
                    }
                    first = false;
                    if k == '-' {
                        class.push('-');
                    } else {
                        class.push_str(&regex::escape(&k.to_string()));
                    }
                }
                if !closed {
                    return Err(bad("a [ is never closed"));
                }
                class.push(']');
                re.push_str(&class);
            }
            other => re.push_str(&regex::escape(&other.to_string())),
        }
    }
    if braces > 0 {
        return Err(bad("a { is never closed"));
    }
    re.push('$');
    regex::Regex::new(&re).map_err(|_| bad("it does not form a pattern"))
}
