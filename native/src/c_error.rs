//! The Rust side of `native/cpp/llg_error.h`: the buffer a C face writes a C++ exception's
//! message into, and reading that message back.

/// Room for a C++ exception's message; a longer one is cut (the C side NUL-terminates it).
pub const ERROR_BYTES: usize = 2048;

/// The message a C face wrote into `buffer`: up to its first NUL, invalid UTF-8 replaced.
pub fn message(buffer: &[u8]) -> String {
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
    String::from_utf8_lossy(&buffer[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_ends_at_the_first_nul_or_the_buffer() {
        assert_eq!(message(b"no GPUs found\0garbage"), "no GPUs found");
        assert_eq!(message(b"cut short"), "cut short");
        assert_eq!(message(&[0; 8]), "");
    }
}
