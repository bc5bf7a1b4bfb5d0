//! The kernel's NTP state, read through `adjtimex(2)`.
//!
//! No maintained crate wraps this call safely (`nix` and `rustix` do not
//! have it), so this module holds the workspace's one `unsafe` block: a
//! read-only query (`modes = 0`) into a zeroed `timex` the kernel fills.

/// What the kernel says about its clock discipline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NtpState {
    /// `STA_UNSYNC` is clear and the call did not return `TIME_ERROR`.
    pub(crate) synchronised: bool,
    /// The kernel's estimated error, microseconds.
    pub(crate) esterror_us: i64,
    /// The kernel's maximum error, microseconds.
    pub(crate) maxerror_us: i64,
    /// The raw return value (`TIME_OK` = 0 … `TIME_ERROR` = 5).
    pub(crate) state: i32,
}

/// Reads the kernel's NTP state without changing it.
#[cfg(target_os = "linux")]
pub(crate) fn read() -> std::io::Result<NtpState> {
    // SAFETY: `timex` is a plain C struct of integers for which all-zero is
    // a valid value; `modes = 0` asks the kernel only to fill it in, which
    // needs no privilege and changes nothing. The pointer is to a local that
    // outlives the call.
    #[allow(unsafe_code, reason = "adjtimex(2) has no safe wrapper in a maintained crate; see the module docs")]
    let (state, tx) = unsafe {
        let mut tx: libc::timex = std::mem::zeroed();
        let state = libc::adjtimex(&mut tx);
        (state, tx)
    };
    if state < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(NtpState {
        synchronised: tx.status & libc::STA_UNSYNC == 0 && state != libc::TIME_ERROR,
        esterror_us: tx.esterror,
        maxerror_us: tx.maxerror,
        state,
    })
}

/// Not Linux: there is no `adjtimex`.
#[cfg(not(target_os = "linux"))]
pub(crate) fn read() -> std::io::Result<NtpState> {
    Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "adjtimex(2) exists only on Linux"))
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #[test]
    fn the_kernel_answers_a_read_only_query() {
        let s = super::read().expect("adjtimex with modes = 0 needs no privilege");
        assert!((0..=5).contains(&s.state), "{s:?}");
        assert!(s.maxerror_us >= 0 && s.esterror_us >= 0, "{s:?}");
    }
}
