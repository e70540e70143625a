use super::*;

/// Depth of a parsed YAML value: lists and maps (keys included) count one level each.
fn depth(v: &yaml_serde::Value) -> usize {
    use yaml_serde::Value as V;
    match v {
        V::Sequence(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        V::Mapping(m) => 1 + m.iter().map(|(k, v)| depth(k).max(depth(v))).max().unwrap_or(0),
        V::Tagged(t) => depth(&t.value),
        _ => 0,
    }
}

/// The nesting the pre-scan finds: the smallest limit it accepts.
fn scanned(source: &str) -> usize {
    (0..200).find(|&limit| Yaml::new(source).scan(limit).too_deep.is_none()).unwrap_or(usize::MAX)
}

/// A small deterministic generator (xorshift), so a failure can be replayed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Random text from YAML's indicators and some words: for every text the parser accepts, the
/// pre-scan must find exactly the nesting of what it parsed (it follows the scanner's tokens).
#[test]
fn the_pre_scan_agrees_with_the_parser_on_random_yaml() {
    const PIECES: &[&str] = &[
        "[", "]", "{", "}", ",", ":", ": ", " ", "  ", "\n", "\n ", "\n  ", "\n    ", "- ", "-", "?", "? ", "#", " #c",
        "'", "\"", "|", "|\n", ">-\n", ">", "a", "b", "ab", "\t", "!t ", "&x ", "\\", "---\n", "...\n", "1", "\r\n",
        "é", "''", "a:", "\u{2028}", "x]", "[y",
    ];
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let (mut parsed, mut mismatches) = (0, Vec::new());
    for _ in 0..60_000 {
        let n = 1 + rng.below(24);
        let text: String = (0..n).map(|_| PIECES[rng.below(PIECES.len())]).collect();
        let Ok(value) = yaml_serde::from_str::<yaml_serde::Value>(&text) else {
            scanned(&text); // must not panic on text the parser refuses
            continue;
        };
        parsed += 1;
        if depth(&value) != scanned(&text) {
            mismatches.push(format!("{text:?}: parsed {} scanned {}", depth(&value), scanned(&text)));
        }
    }
    assert!(parsed > 5_000, "only {parsed} texts parsed; the generator needs more valid YAML");
    assert!(
        mismatches.is_empty(),
        "{} of {parsed}:\n{}",
        mismatches.len(),
        mismatches[..mismatches.len().min(30)].join("\n")
    );
}

/// Nested documents in every style (block and flow collections, indentless sequences, block
/// scalars, quoted and multi-line plain scalars and comments full of brackets and quotes),
/// written to the generator's own rules: the pre-scan finds the nesting the parser builds.
#[test]
fn the_pre_scan_agrees_with_the_parser_on_nested_documents() {
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let (mut parsed, mut mismatches, mut deepest) = (0, Vec::new(), 0);
    for _ in 0..4_000 {
        let mut text = String::new();
        let depth_left = 1 + rng.below(12);
        match rng.below(3) {
            0 => block_map(&mut rng, &mut text, 0, depth_left),
            1 => block_seq(&mut rng, &mut text, 0, depth_left),
            _ => {
                flow(&mut rng, &mut text, depth_left);
                text.push('\n');
            }
        }
        let Ok(value) = yaml_serde::from_str::<yaml_serde::Value>(&text) else { continue };
        parsed += 1;
        deepest = deepest.max(depth(&value));
        if depth(&value) != scanned(&text) {
            mismatches.push(format!("{text}\n--- parsed {} scanned {}", depth(&value), scanned(&text)));
        }
    }
    assert!(parsed > 3_000 && deepest >= 12, "{parsed} documents parsed, the deepest {deepest}");
    assert!(
        mismatches.is_empty(),
        "{} of {parsed}:\n{}",
        mismatches.len(),
        mismatches[..mismatches.len().min(5)].join("\n=====\n")
    );
}

/// A scalar for block context: words whose brackets, quotes and hashes are text.
fn block_scalar_text(rng: &mut Rng, out: &mut String, indent: usize) {
    const PLAIN: &[&str] = &["a", "x[1", "it's", "b]c", "{d", "e#f", "g: h-i", "-j", "?k", "l:m", "n ' o \" p"];
    match rng.below(6) {
        0 => out.push_str("'quoted [ { # '' \" text'"),
        1 => out.push_str("\"double [ { # \\\" \\\\ ' \\n\""),
        2 => {
            // A block scalar: its lines are text whatever they hold.
            out.push_str(if rng.below(2) == 0 { "|" } else { ">-" });
            out.push_str(" # header comment [\n");
            for _ in 0..1 + rng.below(3) {
                out.push_str(&format!("{}[[ {{ ' \" # - ? : ]\n", " ".repeat(indent + 2 + rng.below(2))));
            }
            out.push_str(&" ".repeat(indent));
            return;
        }
        3 => {
            // A plain scalar continued on a more indented line.
            out.push_str(&format!("word\n{}[more {{ text", " ".repeat(indent + 1 + rng.below(3))));
        }
        _ => out.push_str(PLAIN[rng.below(PLAIN.len())]),
    }
    if rng.below(4) == 0 {
        out.push_str(" # comment [ { ' \"");
    }
}

fn value(rng: &mut Rng, out: &mut String, indent: usize, depth_left: usize) {
    // After `key:` or `- `: a nested block collection on the next lines, a flow one, or text.
    match if depth_left == 0 { 3 } else { rng.below(4) } {
        0 => {
            out.push('\n');
            let inner = indent + 1 + rng.below(3);
            block_map(rng, out, inner, depth_left - 1);
        }
        1 => {
            out.push('\n');
            let inner = indent + rng.below(3);
            block_seq(rng, out, inner, depth_left - 1);
        }
        2 => {
            out.push(' ');
            flow(rng, out, depth_left - 1);
            out.push('\n');
        }
        _ => {
            out.push(' ');
            block_scalar_text(rng, out, indent);
            out.push('\n');
        }
    }
}

fn block_map(rng: &mut Rng, out: &mut String, indent: usize, depth_left: usize) {
    for k in 0..1 + rng.below(3) {
        if rng.below(6) == 0 {
            out.push_str(&format!("{}# a comment line ] }} '\n", " ".repeat(rng.below(4))));
        }
        out.push_str(&format!("{}k{k}:", " ".repeat(indent)));
        value(rng, out, indent, depth_left);
    }
}

fn block_seq(rng: &mut Rng, out: &mut String, indent: usize, depth_left: usize) {
    for _ in 0..1 + rng.below(3) {
        out.push_str(&format!("{}-", " ".repeat(indent)));
        value(rng, out, indent + 2, depth_left);
    }
}

fn flow(rng: &mut Rng, out: &mut String, depth_left: usize) {
    const WORDS: &[&str] = &["a", "b c", "'q [ ] , {'", "\"d ] , }\"", "x#y", "-1", "e:f"];
    let seq = rng.below(2) == 0;
    out.push(if seq { '[' } else { '{' });
    for i in 0..rng.below(4) {
        if i > 0 {
            out.push_str(if rng.below(3) == 0 { ",\n  " } else { ", " });
        }
        if !seq {
            out.push_str(&format!("k{i}: "));
        }
        if depth_left > 0 && rng.below(2) == 0 {
            flow(rng, out, depth_left - 1);
        } else {
            out.push_str(WORDS[rng.below(WORDS.len())]);
        }
    }
    out.push(if seq { ']' } else { '}' });
}
