//! Constant-time comparison of secrets.

/// Whether `a` and `b` are equal. The time taken depends only on their
/// lengths, never on where they differ, so a client timing refusals learns
/// nothing about a key beyond its length.
pub fn eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    // Keeps the optimiser from turning the fold back into an early exit.
    std::hint::black_box(diff) == 0
}
