//! The YAML side of the pre-scan: libyaml's scanner reduced to where tokens start and how deep
//! the collections they open are (see `yaml_parser_fetch_next_token` in libyaml-rs).

use super::Scan;

mod scalars;

/// Whether a block collection was opened by a `-` (sequence) or a key (mapping).
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Seq,
    Map,
}

/// One open block collection: the indentation it replaced, and whether a sequence written at
/// its own indentation (`key:` then `- item` at the same column) is open inside it.
struct Level {
    previous: i64,
    kind: Kind,
    indentless: bool,
}

/// One open flow collection, whether a single-pair map (`[a: b]`) is open in it, and the
/// deepest nesting seen in its current entry and in all of it (a pair opened by a `:` after a
/// nested key holds that key: `[[x]: y]` is a list of a map keyed by a list).
struct Flow {
    seq: bool,
    pair: bool,
    entry_max: usize,
    level_max: usize,
}

/// Where a simple key (one that may turn out to be followed by `:`) started, in block context.
#[derive(Clone, Copy)]
struct Key {
    line: usize,
    column: usize,
    index: usize,
}

/// The scanner's state, as in libyaml's `yaml_parser_fetch_next_token` and its helpers, keeping
/// only what decides where tokens start and how deep they are.
pub(super) struct Yaml<'a> {
    s: &'a [u8],
    i: usize,
    /// 0-based line, column (characters) and character index, as libyaml counts them.
    line: usize,
    column: usize,
    index: usize,
    indent: i64,
    levels: Vec<Level>,
    indentless: usize,
    flows: Vec<Flow>,
    pairs: usize,
    simple_key_allowed: bool,
    key: Option<Key>,
    /// The deepest nesting seen since `key` was saved (a mapping opened by its `:` holds it).
    key_max: usize,
    /// The deepest nesting seen so far.
    deepest: usize,
    found: Scan,
}

fn is_break(s: &[u8], i: usize) -> bool {
    matches!(s.get(i), Some(b'\r' | b'\n'))
        || s.get(i..i + 2) == Some(b"\xC2\x85")
        || s.get(i..i + 3).is_some_and(|b| b == b"\xE2\x80\xA8" || b == b"\xE2\x80\xA9")
}

fn is_blank(s: &[u8], i: usize) -> bool {
    matches!(s.get(i), Some(b' ' | b'\t'))
}

/// Blank, line break or the end of the text.
fn is_blankz(s: &[u8], i: usize) -> bool {
    i >= s.len() || is_blank(s, i) || is_break(s, i)
}

fn is_alpha(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'-'
}

/// Characters of a tag after `!` (URI characters; `,[]` only inside `!<…>`).
fn is_tag_char(c: u8, verbatim: bool) -> bool {
    is_alpha(c) || b";/?:@&=+$.%!~*'()".contains(&c) || (verbatim && b",[]".contains(&c))
}

/// The text up to the first character YAML does not allow (libyaml stops there with "control
/// characters are not allowed"); nothing after it is ever scanned.
fn allowed_prefix(source: &str) -> &[u8] {
    let end = source
        .char_indices()
        .find(|&(_, c)| {
            !matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{7E}' | '\u{85}' | '\u{A0}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
        })
        .map_or(source.len(), |(i, _)| i);
    &source.as_bytes()[..end]
}

impl<'a> Yaml<'a> {
    pub(super) fn new(source: &'a str) -> Yaml<'a> {
        let s = allowed_prefix(source);
        // The reader drops a leading byte order mark before the scanner sees the text.
        let i = if s.starts_with("\u{FEFF}".as_bytes()) { 3 } else { 0 };
        Yaml {
            s,
            i,
            line: 0,
            column: 0,
            index: 0,
            indent: -1,
            levels: Vec::new(),
            indentless: 0,
            flows: Vec::new(),
            pairs: 0,
            simple_key_allowed: true,
            key: None,
            key_max: 0,
            deepest: 0,
            found: Scan::default(),
        }
    }

    fn at(&self, k: usize) -> u8 {
        self.s.get(self.i + k).copied().unwrap_or(0)
    }

    fn eof(&self) -> bool {
        self.i >= self.s.len()
    }

    fn block(&self) -> bool {
        self.flows.is_empty()
    }

    fn depth(&self) -> usize {
        self.levels.len() + self.indentless + self.flows.len() + self.pairs
    }

    /// Moves over one character that is not a line break.
    fn skip(&mut self) {
        let width = match self.at(0) {
            0x00..=0x7F => 1,
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            _ => 4,
        };
        self.i = (self.i + width).min(self.s.len());
        self.column += 1;
        self.index += 1;
    }

    /// Moves over one line break (`\r\n` is one).
    fn skip_line(&mut self) {
        let (bytes, chars) = match (self.at(0), self.at(1)) {
            (b'\r', b'\n') => (2, 2),
            (b'\r' | b'\n', _) => (1, 1),
            (0xC2, _) => (2, 1),
            _ => (3, 1),
        };
        self.i = (self.i + bytes).min(self.s.len());
        self.index += chars;
        self.line += 1;
        self.column = 0;
    }

    fn skip_to_break(&mut self) {
        while !self.eof() && !is_break(self.s, self.i) {
            self.skip();
        }
    }

    /// Records that nesting `depth` was reached.
    fn reach(&mut self, depth: usize) {
        self.deepest = self.deepest.max(depth);
        self.key_max = self.key_max.max(depth);
        if let Some(flow) = self.flows.last_mut() {
            flow.entry_max = flow.entry_max.max(depth);
            flow.level_max = flow.level_max.max(depth);
        }
    }

    /// Scans the text, stopping where nesting first exceeds `limit`.
    pub(super) fn scan(mut self, limit: usize) -> Scan {
        loop {
            self.skip_to_next_token();
            if self.block() {
                self.unroll(self.column as i64);
            }
            if self.eof() {
                return self.found;
            }
            if self.block()
                && self.column as i64 == self.indent
                && !(self.at(0) == b'-' && is_blankz(self.s, self.i + 1))
            {
                // Any other token at a mapping's own indentation ends a sequence written there.
                self.end_indentless();
            }
            if !self.token() {
                return self.found; // libyaml stops with an error here: nothing after it is scanned
            }
            self.reach(self.depth());
            if self.deepest > limit {
                self.found.too_deep = Some(self.line + 1);
                return self.found;
            }
        }
    }

    /// `yaml_parser_scan_to_next_token`: spaces, tabs where allowed, comments, line breaks.
    fn skip_to_next_token(&mut self) {
        loop {
            if self.column == 0 && self.s[self.i..].starts_with("\u{FEFF}".as_bytes()) {
                self.skip();
            }
            while self.at(0) == b' ' || (self.at(0) == b'\t' && (!self.block() || !self.simple_key_allowed)) {
                self.skip();
            }
            if self.at(0) == b'#' {
                self.skip_to_break();
            }
            if self.eof() || !is_break(self.s, self.i) {
                return;
            }
            self.skip_line();
            if self.block() {
                self.simple_key_allowed = true;
            }
        }
    }

    /// Scans one token; false where libyaml would stop with an error.
    fn token(&mut self) -> bool {
        let (c, next_blankz) = (self.at(0), is_blankz(self.s, self.i + 1));
        if self.column == 0 && c == b'%' {
            self.unroll(-1);
            self.key = None;
            self.simple_key_allowed = false;
            self.skip_to_break();
            return true;
        }
        if self.column == 0 && self.document_marker() {
            self.unroll(-1);
            self.key = None;
            self.simple_key_allowed = false;
            (0..3).for_each(|_| self.skip());
            return true;
        }
        match c {
            b'[' | b'{' => {
                self.save_key();
                let depth = self.depth() + 1;
                self.flows.push(Flow { seq: c == b'[', pair: false, entry_max: depth, level_max: depth });
                self.simple_key_allowed = true;
                self.skip();
            }
            b']' | b'}' => {
                self.remove_key();
                if let Some(flow) = self.flows.pop() {
                    self.pairs -= usize::from(flow.pair);
                    if let Some(parent) = self.flows.last_mut() {
                        parent.entry_max = parent.entry_max.max(flow.level_max);
                        parent.level_max = parent.level_max.max(flow.level_max);
                    }
                }
                self.simple_key_allowed = false;
                self.skip();
            }
            b',' => {
                self.remove_key();
                if let Some(flow) = self.flows.last_mut() {
                    if flow.pair {
                        flow.pair = false;
                        self.pairs -= 1;
                    }
                    flow.entry_max = 0;
                }
                self.simple_key_allowed = true;
                self.skip();
            }
            b'-' if next_blankz => {
                self.roll(self.column as i64, Kind::Seq);
                self.remove_key();
                self.simple_key_allowed = true;
                self.skip();
            }
            b'?' if !self.block() || next_blankz => {
                self.roll(self.column as i64, Kind::Map);
                self.open_pair();
                self.remove_key();
                self.simple_key_allowed = self.block();
                self.skip();
            }
            b':' if !self.block() || next_blankz => {
                self.value();
                self.skip();
            }
            b'*' | b'&' => {
                if c == b'*' {
                    self.found.first_alias = self.found.first_alias.or(Some(self.line + 1));
                }
                self.save_key();
                self.simple_key_allowed = false;
                self.skip();
                while is_alpha(self.at(0)) {
                    self.skip();
                }
            }
            b'!' => {
                self.save_key();
                self.simple_key_allowed = false;
                let verbatim = self.at(1) == b'<';
                self.skip();
                if verbatim {
                    self.skip();
                }
                while !self.eof() && is_tag_char(self.at(0), verbatim) {
                    self.skip();
                }
                if verbatim && self.at(0) == b'>' {
                    self.skip();
                }
            }
            b'|' | b'>' if self.block() => {
                self.remove_key();
                self.simple_key_allowed = true;
                self.block_scalar();
            }
            b'\'' | b'"' => {
                self.save_key();
                self.simple_key_allowed = false;
                self.quoted_scalar(c);
            }
            _ if self.starts_plain(c, next_blankz) => {
                self.save_key();
                self.simple_key_allowed = false;
                return self.plain_scalar();
            }
            _ => return false,
        }
        true
    }

    fn document_marker(&self) -> bool {
        let three = self.s.get(self.i..self.i + 3);
        (three == Some(b"---") || three == Some(b"...")) && is_blankz(self.s, self.i + 3)
    }

    fn starts_plain(&self, c: u8, next_blankz: bool) -> bool {
        let indicator = is_blankz(self.s, self.i) || b"-?:,[]{}#&*!|>'\"%@`".contains(&c);
        !indicator
            || (c == b'-' && !is_blank(self.s, self.i + 1))
            || (self.block() && (c == b'?' || c == b':') && !next_blankz)
    }

    /// `yaml_parser_save_simple_key`; only block-context keys matter here (they open mappings).
    fn save_key(&mut self) {
        if self.simple_key_allowed && self.block() {
            self.key = Some(Key { line: self.line, column: self.column, index: self.index });
            self.key_max = 0;
        }
    }

    fn remove_key(&mut self) {
        if self.block() {
            self.key = None;
        }
    }

    /// `yaml_parser_fetch_value`: a `:` opens a mapping at its key's column (block context), or a
    /// single-pair mapping inside a flow sequence.
    fn value(&mut self) {
        if !self.block() {
            self.open_pair();
            self.simple_key_allowed = false;
            return;
        }
        // libyaml forgets a key once the line ends or after 1024 characters.
        let key = self.key.take().filter(|k| k.line == self.line && self.index <= k.index + 1024);
        match key {
            Some(k) => {
                if self.roll(k.column as i64, Kind::Map) {
                    self.reach(self.key_max + 1);
                }
                self.simple_key_allowed = false;
            }
            None => {
                self.roll(self.column as i64, Kind::Map);
                self.simple_key_allowed = true;
            }
        }
    }

    fn open_pair(&mut self) {
        if let Some(flow) = self.flows.last_mut()
            && flow.seq
            && !flow.pair
        {
            flow.pair = true;
            self.pairs += 1;
            let key_depth = flow.entry_max;
            self.reach(key_depth + 1);
        }
    }

    /// `yaml_parser_roll_indent`, plus the sequence the parser opens for a `-` at a mapping's own
    /// indentation. True when a block collection starts.
    fn roll(&mut self, column: i64, kind: Kind) -> bool {
        if !self.block() {
            return false;
        }
        if self.indent < column {
            self.levels.push(Level { previous: self.indent, kind, indentless: false });
            self.indent = column;
            return true;
        }
        if kind == Kind::Seq
            && self.indent == column
            && let Some(top) = self.levels.last_mut()
            && top.kind == Kind::Map
            && !top.indentless
        {
            top.indentless = true;
            self.indentless += 1;
            return true;
        }
        false
    }

    fn end_indentless(&mut self) {
        if let Some(top) = self.levels.last_mut()
            && top.indentless
        {
            top.indentless = false;
            self.indentless -= 1;
        }
    }

    /// `yaml_parser_unroll_indent`.
    fn unroll(&mut self, column: i64) {
        while self.indent > column {
            let Some(top) = self.levels.pop() else { break };
            self.indentless -= usize::from(top.indentless);
            self.indent = top.previous;
        }
    }
}
