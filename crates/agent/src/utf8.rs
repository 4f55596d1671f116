//! Turns a byte stream into valid UTF-8 text piece by piece, never splitting a character that
//! arrives in two reads, and replacing invalid bytes with U+FFFD.

#[derive(Default)]
pub struct Utf8Decoder {
    carry: Vec<u8>,
}

impl Utf8Decoder {
    /// Decodes what can be decoded; an incomplete character at the end waits for the next call.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.carry.extend_from_slice(bytes);
        let mut out = String::with_capacity(self.carry.len());
        let mut rest: &[u8] = &self.carry;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (good, bad) = rest.split_at(e.valid_up_to());
                    out.push_str(std::str::from_utf8(good).unwrap_or_default());
                    match e.error_len() {
                        Some(n) => {
                            out.push('\u{FFFD}');
                            rest = &bad[n..];
                        }
                        None => {
                            rest = bad;
                            break;
                        }
                    }
                }
            }
        }
        self.carry = rest.to_vec();
        out
    }

    /// Whatever is left at the end of the stream.
    pub fn finish(&mut self) -> String {
        if self.carry.is_empty() {
            return String::new();
        }
        let s = String::from_utf8_lossy(&self.carry).into_owned();
        self.carry.clear();
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_split_characters() {
        let mut d = Utf8Decoder::default();
        let bytes = "a€b".as_bytes();
        assert_eq!(d.push(&bytes[..2]), "a");
        assert_eq!(d.push(&bytes[2..]), "€b");
        assert_eq!(d.push(&[0xff, b'x']), "\u{FFFD}x");
        assert_eq!(d.push(&[0xe2]), "");
        assert_eq!(d.finish(), "\u{FFFD}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: 256,
            failure_persistence: None,
            ..Default::default()
        })]

        /// However a command's output is cut into reads, the text is what decoding it whole
        /// gives: no character lost or split at a cut, invalid bytes replaced the same way.
        #[test]
        fn any_cuts_decode_as_the_whole(
            bytes in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::prelude::any::<u8>(),
                    proptest::sample::select(vec![0xe2u8, 0x82, 0xac, 0xf0, 0x9f, 0x98, 0x80, 0xc3, 0xa9]),
                ],
                0..64,
            ),
            cuts in proptest::collection::vec(0usize..64, 0..8),
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
            cuts.sort_unstable();
            let mut d = Utf8Decoder::default();
            let mut text = String::new();
            let mut from = 0;
            for c in cuts.into_iter().chain([bytes.len()]) {
                text.push_str(&d.push(&bytes[from..c]));
                from = c;
            }
            text.push_str(&d.finish());
            proptest::prop_assert_eq!(text, String::from_utf8_lossy(&bytes));
        }
    }
}
