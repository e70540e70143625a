//! Text on its way to a terminal.
//!
//! Agents' stderr and results, names from files and rows of the log are not ours: printed raw,
//! an `ESC ] 0 ; … BEL` in them retitles the user's terminal, and other sequences move the
//! cursor, rewrite lines or (OSC 52) write the clipboard. Everything `ltmc` prints as text passes
//! through [`line`] or [`block`]; JSON output passes through [`json`].

use std::borrow::Cow;

/// Characters that never reach the terminal as they are: C0 and C1 controls and DEL (which
/// start or are terminal sequences), and the bidirectional overrides, which reorder what is
/// shown around them.
fn hostile(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

fn escape(text: &str, keep: impl Fn(char) -> bool) -> Cow<'_, str> {
    if !text.chars().any(|c| hostile(c) && !keep(c)) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            c if !hostile(c) || keep(c) => out.push(c),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
        }
    }
    Cow::Owned(out)
}

/// `text` on one line: every control character, line breaks included, written as an escape
/// (`\n`, `\u{1b}`), so it can neither drive the terminal nor forge another line.
pub(crate) fn line(text: &str) -> Cow<'_, str> {
    escape(text, |_| false)
}

/// `text` as a block: like [`line`], but line breaks and tabs stay (a run's output, an error).
pub(crate) fn block(text: &str) -> Cow<'_, str> {
    escape(text, |c| c == '\n' || c == '\t')
}

/// JSON text with the controls serde leaves raw (DEL and C1, which it need not escape) written
/// as `\u` escapes: the same JSON value, safe on a terminal. They can only occur in strings,
/// where the escape means the same character.
pub(crate) fn json(text: String) -> String {
    // serde escapes every C0 control inside strings: the raw ones left are the layout's.
    let raw = |c: char| hostile(c) && !matches!(c, '\n' | '\r' | '\t');
    if !text.chars().any(raw) {
        return text;
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if raw(c) {
            out.push_str(&format!("\\u{:04x}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

/// `text` cut to `max` characters with an ellipsis and its full length, for names and ids
/// echoed in messages: a 100 kB argument does not fill the screen.
pub(crate) fn short(text: &str, max: usize) -> Cow<'_, str> {
    let count = text.chars().count();
    if count <= max {
        return line(text);
    }
    let head: String = text.chars().take(max).collect();
    Cow::Owned(format!("{}… ({count} characters)", line(&head)))
}

/// Writes to stdout; a closed stdout (`ltmc runs | head -1`, once `head` has exited) ends the
/// command quietly with exit 0, as `cat` or `git log` do, instead of a panic. Called through
/// `outln!` and `out!`. Whatever the command did is done by the time it prints.
pub(crate) fn out(args: std::fmt::Arguments<'_>, newline: bool) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let written = stdout.write_fmt(args).and_then(|()| if newline { stdout.write_all(b"\n") } else { Ok(()) });
    match written.and_then(|()| stdout.flush()) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            eprintln!("error: cannot write to stdout: {e}");
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_escaped_and_text_is_kept() {
        assert_eq!(line("plain text, é, ✓"), "plain text, é, ✓");
        assert_eq!(line("a\u{1b}]0;pwned\u{7}b"), "a\\u{1b}]0;pwned\\u{7}b");
        assert_eq!(line("x\u{9b}31m\u{7f}"), "x\\u{9b}31m\\u{7f}");
        assert_eq!(line("one\ntwo\r"), "one\\ntwo\\r");
        assert_eq!(block("one\ntwo\t\u{1b}[2J"), "one\ntwo\t\\u{1b}[2J");
        assert_eq!(line("abc\u{202e}def"), "abc\\u{202e}def");
    }

    #[test]
    fn json_stays_the_same_value() {
        let value = serde_json::json!({"k\u{9b}": "a\u{1b}b\u{7f}c\u{85}"});
        let text = json(serde_json::to_string_pretty(&value).expect("json"));
        assert!(!text.chars().any(|c| hostile(c) && c != '\n'), "{text}");
        assert!(text.contains('\n'), "the layout stays: {text}");
        assert_eq!(serde_json::from_str::<serde_json::Value>(&text).expect("still JSON"), value);
    }

    #[test]
    fn long_names_are_shortened() {
        let long = "x".repeat(10_000);
        let shown = short(&long, 80);
        assert!(shown.len() < 120 && shown.ends_with("(10000 characters)"), "{shown}");
        assert_eq!(short("run-1", 80), "run-1");
    }
}
