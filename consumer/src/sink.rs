//! The output: one reusable buffer of rendered lines, written with a single `write` per batch.
//!
//! Acks depend on `flush` returning `Ok`: only then have all lines of the batch reached the
//! file descriptor. If a write fails part-way, the next successful write starts with a newline,
//! so the torn line cannot swallow the first line of the retry.

use std::io::{self, Write};

pub struct Sink<W> {
    writer: W,
    buffer: Vec<u8>,
    torn: bool,
}

impl<W: Write> Sink<W> {
    pub fn new(writer: W) -> Self {
        Self {
            writer,
            buffer: Vec::with_capacity(256 * 1024),
            torn: false,
        }
    }

    /// Where the renderer appends the lines of the current batch.
    pub fn buffer(&mut self) -> &mut Vec<u8> {
        &mut self.buffer
    }

    /// Writes out the buffered lines. The buffer is emptied either way: on error the caller
    /// naks the batch and its events come back to be rendered again.
    pub fn flush(&mut self) -> io::Result<()> {
        let result = self.write_buffer();
        self.buffer.clear();
        if self.buffer.capacity() > 16 << 20 {
            // One batch of huge payloads must not pin its memory for the life of the process.
            self.buffer.shrink_to(256 * 1024);
        }
        result
    }

    fn write_buffer(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        if self.torn {
            self.writer.write_all(b"\n")?;
            self.torn = false;
        }
        let mut written = 0;
        while written < self.buffer.len() {
            match self.writer.write(&self.buffer[written..]) {
                Ok(0) => {
                    self.torn = written > 0;
                    return Err(io::ErrorKind::WriteZero.into());
                }
                Ok(count) => written += count,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => {
                    self.torn = written > 0 && self.buffer[written - 1] != b'\n';
                    return Err(err);
                }
            }
        }
        self.writer.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Accepts `budget` bytes, then fails until given a new budget.
    struct Flaky {
        written: Vec<u8>,
        budget: usize,
    }

    impl Write for Flaky {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            if self.budget == 0 {
                return Err(io::Error::other("disk full"));
            }
            let count = bytes.len().min(self.budget);
            self.budget -= count;
            self.written.extend_from_slice(&bytes[..count]);
            Ok(count)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn writes_the_whole_batch() {
        let mut sink = Sink::new(Flaky {
            written: Vec::new(),
            budget: usize::MAX,
        });
        sink.buffer().extend_from_slice(b"a\nb\n");
        sink.flush().unwrap();
        assert!(sink.buffer().is_empty());
        assert_eq!(sink.writer.written, b"a\nb\n");
    }

    #[test]
    fn a_torn_line_is_closed_before_the_retry() {
        let mut sink = Sink::new(Flaky {
            written: Vec::new(),
            budget: 3,
        });
        sink.buffer().extend_from_slice(b"one\ntwo\n");
        assert!(sink.flush().is_err());
        assert!(sink.buffer().is_empty());
        sink.writer.budget = usize::MAX;
        sink.buffer().extend_from_slice(b"one\ntwo\n");
        sink.flush().unwrap();
        assert_eq!(sink.writer.written, b"one\none\ntwo\n");
    }
}
