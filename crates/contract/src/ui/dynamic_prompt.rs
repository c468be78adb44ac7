//! The frontend's dynamic prompts (`processDynamicPrompt`): C-style comments removed and each
//! `{a|b|c}` replaced by one of its choices (nested choices allowed, `\{`, `\|`, `\}` escape).
//!
//! The frontend picks a choice at random each time it queues; a conversion picks once.

use std::hash::{BuildHasher, Hasher};

fn strip_comments(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    loop {
        let block = rest.find("/*");
        let line = rest.find("//");
        match (block, line) {
            (Some(b), l) if l.map_or(true, |l| b < l) => {
                out.push_str(&rest[..b]);
                match rest[b + 2..].find("*/") {
                    Some(e) => rest = &rest[b + 2 + e + 2..],
                    // An unclosed block is not a comment: `//` inside it may still be.
                    None => {
                        out.push_str("/*");
                        rest = &rest[b + 2..];
                    }
                }
            }
            (_, Some(l)) => {
                out.push_str(&rest[..l]);
                rest = match rest[l..].find('\n') {
                    Some(e) => &rest[l + e..],
                    None => "",
                };
            }
            _ => {
                out.push_str(rest);
                return out;
            }
        }
    }
}

fn pick(n: usize) -> usize {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_usize(n);
    (h.finish() % n.max(1) as u64) as usize
}

struct Parser {
    chars: Vec<char>,
    i: usize,
}

impl Parser {
    fn escape(&mut self) -> String {
        let next = self.chars.get(self.i).copied();
        self.i += 1;
        let mut s = String::from('\\');
        if let Some(c) = next {
            s.push(c);
        }
        s
    }

    fn choice_block(&mut self) -> String {
        let mut options = Vec::new();
        let mut choice = String::new();
        let mut depth = 0usize;
        while self.i < self.chars.len() {
            let c = self.chars[self.i];
            self.i += 1;
            match c {
                '\\' => {
                    choice.push_str(&self.escape());
                    continue;
                }
                '{' => depth += 1,
                '}' => {
                    if depth == 0 {
                        break;
                    }
                    depth -= 1;
                }
                '|' if depth == 0 => {
                    options.push(std::mem::take(&mut choice));
                    continue;
                }
                _ => {}
            }
            choice.push(c);
        }
        options.push(choice);
        let chosen = options.swap_remove(pick(options.len()));
        process(&chosen)
    }
}

/// `processDynamicPrompt`.
pub fn process(input: &str) -> String {
    let mut p = Parser {
        chars: strip_comments(input).chars().collect(),
        i: 0,
    };
    let mut result = String::new();
    while p.i < p.chars.len() {
        let c = p.chars[p.i];
        p.i += 1;
        match c {
            '\\' => result.push_str(&p.escape()),
            '{' => result.push_str(&p.choice_block()),
            _ => result.push(c),
        }
    }
    // `\{`, `\|`, `\}` lose their backslash.
    let mut out = String::with_capacity(result.len());
    let mut it = result.chars().peekable();
    while let Some(c) = it.next() {
        if c == '\\' && matches!(it.peek(), Some('{' | '}' | '|')) {
            continue;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_go_and_plain_text_stays() {
        assert_eq!(
            process("a photo /* of */ of a cat // note\nnext"),
            "a photo  of a cat \nnext"
        );
        assert_eq!(process("https://x"), "https:");
        assert_eq!(process(r"\{literal\}"), "{literal}");
    }

    #[test]
    fn a_choice_is_one_of_its_options() {
        for _ in 0..20 {
            let out = process("a {red|green|{light|dark} blue} car");
            assert!(
                [
                    "a red car",
                    "a green car",
                    "a light blue car",
                    "a dark blue car"
                ]
                .contains(&out.as_str()),
                "{out}"
            );
        }
    }
}
