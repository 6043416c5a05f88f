//! Splitting a byte stream into lines without trusting it: a line longer than the
//! limit is dropped (up to its newline) and reported, never buffered whole, and each
//! byte is scanned once, so an endless line costs neither memory nor quadratic time.

use bytes::{Bytes, BytesMut};

/// What the splitter found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    /// A complete line, without its newline.
    Line(Bytes),
    /// A line longer than the limit was dropped; this is how long it was (so far,
    /// when it had not ended).
    TooLong(usize),
}

/// Splits bytes into lines of at most `max` bytes.
#[derive(Debug)]
pub struct LineSplitter {
    buf: BytesMut,
    max: usize,
    /// Bytes of `buf` already scanned for a newline.
    scanned: usize,
    /// Set while skipping the rest of an overlong line: bytes dropped so far.
    skipping: Option<usize>,
    /// An overlong line whose report is due.
    reported: bool,
}

impl LineSplitter {
    /// A splitter for lines of at most `max` bytes.
    pub fn new(max: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            max,
            scanned: 0,
            skipping: None,
            reported: false,
        }
    }

    /// Takes more bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete line (or overlong report), if the bytes so far hold one.
    pub fn next_piece(&mut self) -> Option<Piece> {
        loop {
            let newline = self.buf[self.scanned..]
                .iter()
                .position(|&b| b == b'\n')
                .map(|i| self.scanned + i);
            match (newline, self.skipping) {
                (Some(at), Some(dropped)) => {
                    // The overlong line ends here.
                    let _ = self.buf.split_to(at + 1);
                    self.scanned = 0;
                    self.skipping = None;
                    if !self.reported {
                        return Some(Piece::TooLong(dropped + at));
                    }
                    self.reported = false;
                }
                (Some(at), None) => {
                    let mut line = self.buf.split_to(at + 1);
                    line.truncate(at);
                    self.scanned = 0;
                    if line.len() > self.max {
                        return Some(Piece::TooLong(line.len()));
                    }
                    return Some(Piece::Line(line.freeze()));
                }
                (None, Some(dropped)) => {
                    // Still inside the overlong line: drop what came.
                    let n = self.buf.len();
                    self.buf.clear();
                    self.scanned = 0;
                    self.skipping = Some(dropped + n);
                    return None;
                }
                (None, None) => {
                    self.scanned = self.buf.len();
                    if self.buf.len() > self.max {
                        // Too long already: report it once, drop it, skip to its end.
                        let n = self.buf.len();
                        self.buf.clear();
                        self.scanned = 0;
                        self.skipping = Some(n);
                        self.reported = true;
                        return Some(Piece::TooLong(n));
                    }
                    return None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(s: &mut LineSplitter) -> Vec<Piece> {
        std::iter::from_fn(|| s.next_piece()).collect()
    }

    #[test]
    fn lines_split_across_chunks() {
        let mut s = LineSplitter::new(10);
        s.push(b"ab");
        assert_eq!(pieces(&mut s), vec![]);
        s.push(b"c\nde\n\nf");
        assert_eq!(
            pieces(&mut s),
            vec![
                Piece::Line(Bytes::from_static(b"abc")),
                Piece::Line(Bytes::from_static(b"de")),
                Piece::Line(Bytes::new())
            ]
        );
        s.push(b"g\n");
        assert_eq!(pieces(&mut s), vec![Piece::Line(Bytes::from_static(b"fg"))]);
    }

    #[test]
    fn an_overlong_line_is_dropped_once_and_the_next_one_kept() {
        let mut s = LineSplitter::new(4);
        s.push(b"0123456789");
        assert_eq!(pieces(&mut s), vec![Piece::TooLong(10)]);
        // An endless line never grows the buffer.
        for _ in 0..1000 {
            s.push(&[b'x'; 1024]);
            assert_eq!(pieces(&mut s), vec![]);
            assert!(s.buf.len() <= 1024);
        }
        s.push(b"yy\nok\n");
        assert_eq!(pieces(&mut s), vec![Piece::Line(Bytes::from_static(b"ok"))]);
        // A long line that arrives whole is reported with its length.
        s.push(b"abcdefgh\nab\n");
        assert_eq!(
            pieces(&mut s),
            vec![Piece::TooLong(8), Piece::Line(Bytes::from_static(b"ab"))]
        );
    }
}
