//! The output cap: at most 64 KiB of a step's (or an exec's) output is kept — the first 16 KiB and the
//! last 48 KiB, joined by a line `[... N bytes omitted ...]` — so the end of a failing command, where
//! the reason usually is, is never lost however much it printed before.

pub const HEAD_CAP: usize = 16 * 1024;
pub const TAIL_CAP: usize = 48 * 1024;

/// Accumulates text in bounded memory, keeping its head and its tail.
#[derive(Debug, Clone)]
pub struct CappedOutput {
    head: String,
    tail: String,
    omitted: u64,
    head_cap: usize,
    tail_cap: usize,
}

impl Default for CappedOutput {
    fn default() -> Self {
        Self::new(HEAD_CAP, TAIL_CAP)
    }
}

/// Largest index `<= i` that is a char boundary of `s`.
fn floor_boundary(s: &str, mut i: usize) -> usize {
    if i >= s.len() {
        return s.len();
    }
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Smallest index `>= i` that is a char boundary of `s`.
fn ceil_boundary(s: &str, mut i: usize) -> usize {
    if i >= s.len() {
        return s.len();
    }
    while !s.is_char_boundary(i) {
        i += 1;
    }
    i
}

impl CappedOutput {
    pub fn new(head_cap: usize, tail_cap: usize) -> Self {
        Self {
            head: String::new(),
            tail: String::new(),
            omitted: 0,
            head_cap,
            tail_cap,
        }
    }

    pub fn push(&mut self, mut text: &str) {
        if self.tail.is_empty() && self.omitted == 0 && self.head.len() < self.head_cap {
            let room = self.head_cap - self.head.len();
            let cut = floor_boundary(text, room);
            // A multi-byte char straddling the cap goes to the tail rather than splitting it.
            self.head.push_str(&text[..cut]);
            text = &text[cut..];
            if text.is_empty() {
                return;
            }
        }
        self.tail.push_str(text);
        // Trim lazily, at twice the cap, so pushing many small pieces stays linear.
        if self.tail.len() > self.tail_cap * 2 {
            self.trim_tail();
        }
    }

    fn trim_tail(&mut self) {
        if self.tail.len() > self.tail_cap {
            let cut = ceil_boundary(&self.tail, self.tail.len() - self.tail_cap);
            self.omitted += cut as u64;
            self.tail.drain(..cut);
        }
    }

    /// Bytes seen so far, kept or not.
    pub fn total_len(&self) -> u64 {
        (self.head.len() + self.tail.len()) as u64 + self.omitted
    }

    /// Whether anything had to be dropped so far.
    pub fn is_truncated(&self) -> bool {
        self.omitted > 0 || self.tail.len() > self.tail_cap
    }

    /// The kept text, with the omission marker where bytes were dropped, and whether any were.
    pub fn render(&self) -> (String, bool) {
        let mut me = self.clone();
        me.trim_tail();
        if me.omitted == 0 {
            let mut all = me.head;
            all.push_str(&me.tail);
            return (all, false);
        }
        let mut out = String::with_capacity(me.head.len() + me.tail.len() + 48);
        out.push_str(&me.head);
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(&format!("[... {} bytes omitted ...]\n", me.omitted));
        out.push_str(&me.tail);
        (out, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_output_is_kept_whole() {
        let mut c = CappedOutput::default();
        c.push("hello\n");
        c.push("world\n");
        assert_eq!(c.render(), ("hello\nworld\n".to_string(), false));
    }

    #[test]
    fn big_output_keeps_head_and_tail() {
        let mut c = CappedOutput::default();
        let line = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\n"; // 64 bytes
        for _ in 0..10_000 {
            c.push(line);
        }
        c.push("THE END\n");
        let (text, truncated) = c.render();
        assert!(truncated);
        assert!(text.ends_with("THE END\n"));
        assert!(text.starts_with(line));
        let total = 64 * 10_000 + 8;
        let kept_payload = HEAD_CAP + TAIL_CAP;
        let marker = format!("[... {} bytes omitted ...]\n", total - kept_payload);
        assert!(text.contains(&marker), "missing {marker}");
        assert!(text.len() <= kept_payload + marker.len() + 1);
    }

    #[test]
    fn never_splits_a_char() {
        let mut c = CappedOutput::new(5, 7);
        for _ in 0..100 {
            c.push("é€😀");
        }
        let (text, truncated) = c.render();
        assert!(truncated);
        assert!(std::str::from_utf8(text.as_bytes()).is_ok());
    }
}
