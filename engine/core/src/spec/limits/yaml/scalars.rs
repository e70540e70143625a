//! Scalars, whose text the pre-scan steps over as libyaml does: block scalars by indentation,
//! quoted ones to their closing quote, plain ones to `: `, ` #`, a flow indicator, or a line
//! that is not indented past the enclosing block.

use super::super::nul_escape;
use super::{Yaml, is_blank, is_blankz, is_break};

impl Yaml<'_> {
    /// `yaml_parser_scan_block_scalar`: the header, then every line indented at least as much as
    /// the first (or the explicit indentation), which is text.
    pub(super) fn block_scalar(&mut self) {
        self.skip();
        let mut increment = 0i64;
        for _ in 0..2 {
            match self.at(0) {
                b'+' | b'-' => self.skip(),
                d @ b'1'..=b'9' => {
                    increment = i64::from(d - b'0');
                    self.skip();
                }
                _ => {}
            }
        }
        while is_blank(self.s, self.i) {
            self.skip();
        }
        if self.at(0) == b'#' {
            self.skip_to_break();
        }
        if !self.eof() && !is_break(self.s, self.i) {
            return; // "did not find expected comment or line break": libyaml stops
        }
        if !self.eof() {
            self.skip_line();
        }
        let mut indent = match increment {
            0 => 0,
            n if self.indent >= 0 => self.indent + n,
            n => n,
        };
        self.block_scalar_breaks(&mut indent);
        while self.column as i64 == indent && !self.eof() {
            self.skip_to_break();
            if !self.eof() {
                self.skip_line();
            }
            self.block_scalar_breaks(&mut indent);
        }
    }

    /// `yaml_parser_scan_block_scalar_breaks`: empty lines and indentation; finds the
    /// indentation of the text when the header does not give it.
    fn block_scalar_breaks(&mut self, indent: &mut i64) {
        let mut max_indent = 0i64;
        loop {
            while (*indent == 0 || (self.column as i64) < *indent) && self.at(0) == b' ' {
                self.skip();
            }
            max_indent = max_indent.max(self.column as i64);
            if self.eof() || !is_break(self.s, self.i) {
                break;
            }
            self.skip_line();
        }
        if *indent == 0 {
            *indent = max_indent.max(self.indent + 1).max(1);
        }
    }

    /// `yaml_parser_scan_flow_scalar`: up to the closing quote, over `''` or `\` escapes.
    pub(super) fn quoted_scalar(&mut self, quote: u8) {
        self.skip();
        while !self.eof() {
            let c = self.at(0);
            if is_break(self.s, self.i) {
                self.skip_line();
            } else if quote == b'\'' && c == b'\'' && self.at(1) == b'\'' {
                self.skip();
                self.skip();
            } else if c == quote {
                self.skip();
                return;
            } else if quote == b'"' && c == b'\\' {
                if nul_escape(self.s, self.i + 1) {
                    self.found.nul = self.found.nul.or(Some(self.line + 1));
                }
                self.skip();
                if is_break(self.s, self.i) {
                    self.skip_line();
                } else if !self.eof() {
                    self.skip();
                }
            } else {
                self.skip();
            }
        }
    }

    /// `yaml_parser_scan_plain_scalar`: words up to `: `, ` #`, a flow indicator inside flow
    /// collections, or (in block context) a line indented no deeper than the enclosing block.
    pub(super) fn plain_scalar(&mut self) -> bool {
        let indent = self.indent + 1;
        let mut leading_blanks = false;
        loop {
            if (self.column == 0 && self.document_marker()) || self.at(0) == b'#' {
                break;
            }
            while !is_blankz(self.s, self.i) {
                let c = self.at(0);
                if !self.block() && c == b':' && b",?[]{}".contains(&self.at(1)) {
                    return false; // "found unexpected ':'": libyaml stops
                }
                if (c == b':' && is_blankz(self.s, self.i + 1)) || (!self.block() && b",[]{}".contains(&c)) {
                    break;
                }
                self.skip();
            }
            if !(is_blank(self.s, self.i) || is_break(self.s, self.i)) {
                break;
            }
            while is_blank(self.s, self.i) || is_break(self.s, self.i) {
                if is_blank(self.s, self.i) {
                    self.skip();
                } else {
                    self.skip_line();
                    leading_blanks = true;
                }
            }
            if self.block() && (self.column as i64) < indent {
                break;
            }
        }
        if leading_blanks {
            self.simple_key_allowed = true;
        }
        true
    }
}
