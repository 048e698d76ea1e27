//! Prompt text as files hold it: the encodings intake reads, and what it normalises.
//!
//! [`decode`] is pure: the bytes of a file in, the prompt or the reason it is not one out.
//!
//! - **Read:** UTF-8, with or without a byte-order mark (the mark is dropped), and UTF-16 in
//!   either byte order *with* its byte-order mark (`FF FE`, `FE FF`: what Windows editors write
//!   as "Unicode"), decoded to UTF-8.
//! - **Normalised:** each CRLF becomes LF, and a CR that ends the text becomes LF (a line end
//!   whose LF was cut off, or an old Mac one). A lone CR elsewhere is kept, and so is everything
//!   else: no trimming, no Unicode normalisation.
//! - **Refused**, with a reason that says what was found, where, and what to do: invalid UTF-8;
//!   UTF-16 of odd length or with an unpaired surrogate; UTF-32 (by its byte-order mark);
//!   UTF-16 without a byte-order mark, recognised by NUL bytes on one side of most byte pairs
//!   (guessing its byte order could turn a prompt into nonsense); and any other NUL character,
//!   which no prompt needs and PostgreSQL cannot store.
//!
//! Offsets in reasons count the file's bytes, byte-order mark included, as a hex editor shows them.

use std::fmt;

/// A byte order, as a byte-order mark gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    Little,
    Big,
}

impl fmt::Display for Order {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Order::Little => "LE",
            Order::Big => "BE",
        })
    }
}

/// Why a file's bytes are not a prompt. Each message follows the file's name ("x.prompt: is
/// ...") and ends with what to do.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotText {
    #[error("is not valid UTF-8 text (bad byte at offset {offset}); save it as UTF-8")]
    Utf8 { offset: usize },

    #[error(
        "contains a NUL character at offset {offset}, which a text prompt does not have; save the prompt as UTF-8 text"
    )]
    Nul { offset: usize },

    #[error(
        "looks like UTF-16 without a byte-order mark (the {side} byte of {nuls} of its {pairs} byte pairs is NUL); save it as UTF-8 or UTF-16 with BOM",
        side = if *.order == Order::Little { "second" } else { "first" }
    )]
    Utf16WithoutBom {
        order: Order,
        nuls: usize,
        pairs: usize,
    },

    #[error(
        "is UTF-16{order} by its byte-order mark but has an odd number of bytes: the last, at offset {offset}, is half a character; save it as UTF-8"
    )]
    Utf16OddLength { order: Order, offset: usize },

    #[error(
        "is UTF-16{order} by its byte-order mark but has an unpaired surrogate ({unit:#06X}, half of a character) at offset {offset}; save it as UTF-8"
    )]
    Utf16Surrogate {
        order: Order,
        unit: u16,
        offset: usize,
    },

    #[error(
        "is UTF-32{order} by its byte-order mark, which intake does not read; save it as UTF-8"
    )]
    Utf32 { order: Order },
}

/// A file's bytes as prompt text: decoded from what its byte-order mark says (UTF-8 without one)
/// and with CRLF line ends made LF. Takes the bytes so that UTF-8 is not copied.
pub fn decode(bytes: Vec<u8>) -> Result<String, NotText> {
    // UTF-32LE's mark begins with UTF-16LE's, so it is looked for first. (A UTF-16LE text that
    // begins with a NUL character would look the same, and is refused either way.)
    let text = match bytes.as_slice() {
        [0xFF, 0xFE, 0, 0, ..] => Err(NotText::Utf32 {
            order: Order::Little,
        }),
        [0, 0, 0xFE, 0xFF, ..] => Err(NotText::Utf32 { order: Order::Big }),
        [0xFF, 0xFE, ..] => utf16(&bytes, Order::Little),
        [0xFE, 0xFF, ..] => utf16(&bytes, Order::Big),
        [0xEF, 0xBB, 0xBF, ..] => utf8(bytes, 3),
        _ => utf8(bytes, 0),
    }?;
    Ok(lf_line_ends(text))
}

/// UTF-8 after a byte-order mark of `mark` bytes (0 for none), which is dropped.
fn utf8(bytes: Vec<u8>, mark: usize) -> Result<String, NotText> {
    let body = &bytes[mark..];
    if let Some(at) = body.iter().position(|&b| b == 0) {
        return Err(utf16_without_bom(body).unwrap_or(NotText::Nul { offset: mark + at }));
    }
    let mut text = String::from_utf8(bytes).map_err(|e| NotText::Utf8 {
        offset: e.utf8_error().valid_up_to(),
    })?;
    // A mark is valid UTF-8 (U+FEFF), so it is whole characters to drain.
    text.drain(..mark);
    Ok(text)
}

/// UTF-16 in `order`, after its two-byte mark.
fn utf16(bytes: &[u8], order: Order) -> Result<String, NotText> {
    const MARK: usize = 2;
    let body = &bytes[MARK..];
    if body.len() % 2 == 1 {
        return Err(NotText::Utf16OddLength {
            order,
            offset: bytes.len() - 1,
        });
    }
    let units = body.chunks_exact(2).map(|pair| {
        let pair = [pair[0], pair[1]];
        match order {
            Order::Little => u16::from_le_bytes(pair),
            Order::Big => u16::from_be_bytes(pair),
        }
    });
    // ASCII takes half the bytes in UTF-8, most of the rest no more.
    let mut text = String::with_capacity(body.len());
    let mut offset = MARK;
    for decoded in char::decode_utf16(units) {
        match decoded {
            Ok('\0') => return Err(NotText::Nul { offset }),
            Ok(c) => {
                text.push(c);
                offset += 2 * c.len_utf16();
            }
            Err(e) => {
                return Err(NotText::Utf16Surrogate {
                    order,
                    unit: e.unpaired_surrogate(),
                    offset,
                });
            }
        }
    }
    Ok(text)
}

/// Whether bytes with NULs in them read as UTF-16 saved without its mark: text mostly of Latin
/// letters, digits, spaces and line ends has a NUL in most byte pairs, always on the same side.
/// At least a quarter of the pairs, and (almost) none on the other side: a binary file's NULs
/// fall on both sides.
fn utf16_without_bom(bytes: &[u8]) -> Option<NotText> {
    let pairs = bytes.len() / 2;
    let (mut first, mut second) = (0, 0);
    for pair in bytes.chunks_exact(2) {
        first += usize::from(pair[0] == 0);
        second += usize::from(pair[1] == 0);
    }
    let lopsided = |many: usize, few: usize| many > 0 && many * 4 >= pairs && few * 8 <= many;
    let (order, nuls) = if lopsided(second, first) {
        (Order::Little, second)
    } else if lopsided(first, second) {
        (Order::Big, first)
    } else {
        return None;
    };
    Some(NotText::Utf16WithoutBom { order, nuls, pairs })
}

/// CRLF to LF, and a CR at the very end to LF; nothing else changes. No copy without a CR.
fn lf_line_ends(text: String) -> String {
    if !text.contains('\r') {
        return text;
    }
    let mut text = text.replace("\r\n", "\n");
    if text.ends_with('\r') {
        text.pop();
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `text` as a UTF-16 file in `order`, with its byte-order mark.
    fn utf16_file(text: &str, order: Order) -> Vec<u8> {
        std::iter::once(0xFEFF)
            .chain(text.encode_utf16())
            .flat_map(|u| match order {
                Order::Little => u.to_le_bytes(),
                Order::Big => u.to_be_bytes(),
            })
            .collect()
    }

    /// UTF-16 code units as a file in `order`, with its byte-order mark: for text no `&str` holds.
    fn units_file(units: &[u16], order: Order) -> Vec<u8> {
        let mut with_mark = vec![0xFEFF];
        with_mark.extend_from_slice(units);
        with_mark
            .iter()
            .flat_map(|u| match order {
                Order::Little => u.to_le_bytes(),
                Order::Big => u.to_be_bytes(),
            })
            .collect()
    }

    fn reason(bytes: &[u8]) -> String {
        decode(bytes.to_vec()).unwrap_err().to_string()
    }

    #[test]
    fn utf8_is_kept_as_it_is() {
        let text = "  héllo ✓ 日本 😀\n\tno trimming, a lone\rCR kept  \n\n";
        assert_eq!(decode(text.as_bytes().to_vec()), Ok(text.to_string()));
        assert_eq!(decode(Vec::new()), Ok(String::new()));
    }

    #[test]
    fn a_utf8_byte_order_mark_is_dropped() {
        assert_eq!(
            decode(b"\xEF\xBB\xBFFix the bug\n".to_vec()),
            Ok("Fix the bug\n".into())
        );
        assert_eq!(decode(b"\xEF\xBB\xBF".to_vec()), Ok(String::new()));
    }

    #[test]
    fn crlf_becomes_lf_and_so_does_a_final_cr() {
        assert_eq!(
            decode(b"one\r\ntwo\r\n\r\nthree".to_vec()),
            Ok("one\ntwo\n\nthree".into())
        );
        assert_eq!(decode(b"cut short\r".to_vec()), Ok("cut short\n".into()));
        assert_eq!(decode(b"\r\n\r\n".to_vec()), Ok("\n\n".into()));
        // Only the pair is a line end: a lone CR before it stays, as anywhere else.
        assert_eq!(decode(b"a\r\r\nb\rc".to_vec()), Ok("a\r\nb\rc".into()));
        assert_eq!(
            decode(b"\xEF\xBB\xBFwith mark\r\n".to_vec()),
            Ok("with mark\n".into())
        );
    }

    #[test]
    fn utf16_with_its_byte_order_mark_is_decoded_in_either_order() {
        let text = "héllo ✓ 日本 😀\r\nsecond line\r\n";
        for order in [Order::Little, Order::Big] {
            assert_eq!(
                decode(utf16_file(text, order)),
                Ok("héllo ✓ 日本 😀\nsecond line\n".into()),
                "{order}"
            );
            assert_eq!(decode(utf16_file("", order)), Ok(String::new()), "{order}");
        }
        assert_eq!(
            utf16_file("A", Order::Little),
            [0xFF, 0xFE, b'A', 0],
            "Notepad's bytes"
        );
        assert_eq!(utf16_file("A", Order::Big), [0xFE, 0xFF, 0, b'A']);
    }

    #[test]
    fn utf16_of_odd_length_is_refused_with_the_offset_of_the_half_character() {
        for order in [Order::Little, Order::Big] {
            let mut bytes = utf16_file("hi", order);
            bytes.push(b'!');
            assert_eq!(
                decode(bytes.clone()),
                Err(NotText::Utf16OddLength { order, offset: 6 })
            );
            let reason = reason(&bytes);
            assert!(reason.contains("odd number of bytes"), "{reason}");
            assert!(reason.contains("offset 6"), "{reason}");
            assert!(reason.contains(&format!("UTF-16{order}")), "{reason}");
            assert!(reason.ends_with("save it as UTF-8"), "{reason}");
        }
        assert!(matches!(
            decode(vec![0xFF, 0xFE, b'x']),
            Err(NotText::Utf16OddLength { offset: 2, .. })
        ));
    }

    #[test]
    fn an_unpaired_surrogate_is_refused_with_its_offset() {
        let a = u16::from(b'a');
        for order in [Order::Little, Order::Big] {
            // A high surrogate before a letter, a low one alone, a high one at the end.
            for (units, unit, offset) in [
                (&[a, 0xD83D, a][..], 0xD83D, 4),
                (&[a, a, 0xDE00][..], 0xDE00, 6),
                (&[0xD83D, 0xDE00, 0xD83D][..], 0xD83D, 6),
            ] {
                assert_eq!(
                    decode(units_file(units, order)),
                    Err(NotText::Utf16Surrogate {
                        order,
                        unit,
                        offset
                    }),
                    "{units:X?} {order}"
                );
            }
        }
        let reason = reason(&units_file(&[a, 0xD83D, a], Order::Little));
        assert!(
            reason.contains("unpaired surrogate (0xD83D, half of a character) at offset 4"),
            "{reason}"
        );
        assert!(reason.ends_with("save it as UTF-8"), "{reason}");
    }

    #[test]
    fn utf32_is_refused_by_name() {
        let le = [0xFF, 0xFE, 0, 0, b'h', 0, 0, 0];
        let be = [0, 0, 0xFE, 0xFF, 0, 0, 0, b'h'];
        assert_eq!(
            decode(le.to_vec()),
            Err(NotText::Utf32 {
                order: Order::Little
            })
        );
        assert_eq!(
            decode(be.to_vec()),
            Err(NotText::Utf32 { order: Order::Big })
        );
        assert!(reason(&le).starts_with("is UTF-32LE by its byte-order mark"));
        assert!(reason(&le).ends_with("save it as UTF-8"));
    }

    #[test]
    fn utf16_without_its_mark_is_told_apart_from_other_nul_bytes() {
        for order in [Order::Little, Order::Big] {
            // Without the mark; with a non-ASCII letter, which alone would read as bad UTF-8.
            let bytes = utf16_file("Fix the bug in café.rs\r\n", order)[2..].to_vec();
            let found = decode(bytes.clone());
            assert!(
                matches!(found, Err(NotText::Utf16WithoutBom { order: o, .. }) if o == order),
                "{found:?}"
            );
            let reason = reason(&bytes);
            assert!(
                reason.starts_with("looks like UTF-16 without a byte-order mark"),
                "{reason}"
            );
            assert!(
                reason.ends_with("save it as UTF-8 or UTF-16 with BOM"),
                "{reason}"
            );
        }
        assert!(
            reason(&utf16_file("hi", Order::Little)[2..]).contains("the second byte of 2 of its 2")
        );
        assert_eq!(
            decode(b"text\0with a NUL".to_vec()),
            Err(NotText::Nul { offset: 4 })
        );
        assert_eq!(
            decode(b"\xEF\xBB\xBFok\0".to_vec()),
            Err(NotText::Nul { offset: 5 }),
            "offsets count the mark"
        );
        assert_eq!(
            decode(vec![0; 8]),
            Err(NotText::Nul { offset: 0 }),
            "both sides"
        );
        assert_eq!(decode(vec![0]), Err(NotText::Nul { offset: 0 }));
        // A NUL character in UTF-16 is no better than one in UTF-8.
        assert_eq!(
            decode(units_file(&[u16::from(b'a'), 0], Order::Big)),
            Err(NotText::Nul { offset: 4 })
        );
        assert!(reason(b"some text\0").contains("NUL character at offset 9"));
    }

    #[test]
    fn invalid_utf8_gives_the_file_offset_of_the_bad_byte() {
        assert_eq!(decode(b"ok\xff".to_vec()), Err(NotText::Utf8 { offset: 2 }));
        assert_eq!(
            decode(b"\xEF\xBB\xBFcaf\xe9".to_vec()),
            Err(NotText::Utf8 { offset: 6 })
        );
        assert_eq!(
            reason(b"caf\xe9"),
            "is not valid UTF-8 text (bad byte at offset 3); save it as UTF-8"
        );
    }
}
