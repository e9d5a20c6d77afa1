//! SHA-256 (FIPS 180-4): the agent compares what a file holds with what
//! podloop last wrote there, without a `sha256sum` process per save.

const K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
];

pub struct Sha256 {
    state: [u32; 8],
    block: [u8; 64],
    filled: usize,
    total: u64,
}

impl Sha256 {
    pub fn new() -> Sha256 {
        Sha256 {
            state: [
                0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
                0x5be0cd19,
            ],
            block: [0; 64],
            filled: 0,
            total: 0,
        }
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.total += data.len() as u64;
        if self.filled > 0 {
            let take = (64 - self.filled).min(data.len());
            self.block[self.filled..self.filled + take].copy_from_slice(&data[..take]);
            self.filled += take;
            data = &data[take..];
            if self.filled < 64 {
                return;
            }
            let block = self.block;
            compress(&mut self.state, &block);
            self.filled = 0;
        }
        // Whole blocks straight from the input, not copied one by one.
        let whole = data.len() - data.len() % 64;
        compress(&mut self.state, &data[..whole]);
        let rest = &data[whole..];
        self.block[..rest.len()].copy_from_slice(rest);
        self.filled = rest.len();
    }

    /// The digest as 64 lowercase hex digits, the way `sha256sum` prints it.
    pub fn finish_hex(mut self) -> [u8; 64] {
        let bits = self.total.wrapping_mul(8);
        self.update(&[0x80]);
        while self.filled != 56 {
            self.update(&[0]);
        }
        self.update(&bits.to_be_bytes());
        let mut hex = [0u8; 64];
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        for (i, word) in self.state.iter().enumerate() {
            for (j, byte) in word.to_be_bytes().iter().enumerate() {
                hex[i * 8 + j * 2] = DIGITS[(byte >> 4) as usize];
                hex[i * 8 + j * 2 + 1] = DIGITS[(byte & 15) as usize];
            }
        }
        hex
    }
}

/// Compresses `blocks` (a multiple of 64 bytes) into `state`: with the
/// CPU's SHA instructions where it has them (a file's hash is most of the
/// agent's own CPU time per save), else portably.
fn compress(state: &mut [u32; 8], blocks: &[u8]) {
    debug_assert!(blocks.len().is_multiple_of(64));
    if blocks.is_empty() {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if shani::available() {
        // SAFETY: the CPU has the features `shani::compress` is built for.
        unsafe { shani::compress(state, blocks) };
        return;
    }
    for block in blocks.chunks_exact(64) {
        compress_portable(state, block);
    }
}

fn compress_portable(state: &mut [u32; 8], block: &[u8]) {
    let mut w = [0u32; 64];
    for i in 0..16 {
        w[i] = u32::from_be_bytes([
            block[i * 4],
            block[i * 4 + 1],
            block[i * 4 + 2],
            block[i * 4 + 3],
        ]);
    }
    for i in 16..64 {
        let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
        let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16]
            .wrapping_add(s0)
            .wrapping_add(w[i - 7])
            .wrapping_add(s1);
    }
    let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h] = *state;
    for i in 0..64 {
        let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
        let ch = (e & f) ^ (!e & g);
        let t1 = h
            .wrapping_add(s1)
            .wrapping_add(ch)
            .wrapping_add(K[i])
            .wrapping_add(w[i]);
        let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
        let maj = (a & b) ^ (a & c) ^ (b & c);
        let t2 = s0.wrapping_add(maj);
        h = g;
        g = f;
        f = e;
        e = d.wrapping_add(t1);
        d = c;
        c = b;
        b = a;
        a = t1.wrapping_add(t2);
    }
    for (s, v) in state.iter_mut().zip([a, b, c, d, e, f, g, h]) {
        *s = s.wrapping_add(v);
    }
}

#[cfg(target_arch = "x86_64")]
mod shani {
    use core::arch::x86_64::*;
    use core::sync::atomic::{AtomicU8, Ordering};

    /// Whether the CPU has SHA-NI and the SSE levels it goes with; asked
    /// once (`cpuid`), remembered.
    pub fn available() -> bool {
        static KNOWN: AtomicU8 = AtomicU8::new(0);
        match KNOWN.load(Ordering::Relaxed) {
            1 => false,
            2 => true,
            _ => {
                let yes = detect();
                KNOWN.store(if yes { 2 } else { 1 }, Ordering::Relaxed);
                yes
            }
        }
    }

    fn detect() -> bool {
        if __cpuid(0).eax < 7 {
            return false;
        }
        let basic = __cpuid(1);
        let extended = __cpuid_count(7, 0);
        let sse2 = basic.edx & (1 << 26) != 0;
        let ssse3 = basic.ecx & (1 << 9) != 0;
        let sse41 = basic.ecx & (1 << 19) != 0;
        let sha = extended.ebx & (1 << 29) != 0;
        sse2 && ssse3 && sse41 && sha
    }

    /// Four rounds: the message words `w` plus their constants.
    #[inline(always)]
    unsafe fn rounds4(abef: &mut __m128i, cdgh: &mut __m128i, w: __m128i, i: usize) {
        // SAFETY (all of this module's intrinsics): called only from
        // `compress`, whose target features they need.
        unsafe {
            let k = _mm_loadu_si128(super::K.as_ptr().add(4 * i) as *const __m128i);
            let t1 = _mm_add_epi32(w, k);
            *cdgh = _mm_sha256rnds2_epu32(*cdgh, *abef, t1);
            let t2 = _mm_shuffle_epi32(t1, 0x0E);
            *abef = _mm_sha256rnds2_epu32(*abef, *cdgh, t2);
        }
    }

    /// The next four message words from the previous sixteen.
    #[inline(always)]
    unsafe fn schedule(w0: __m128i, w1: __m128i, w2: __m128i, w3: __m128i) -> __m128i {
        unsafe {
            let t1 = _mm_sha256msg1_epu32(w0, w1);
            let t2 = _mm_alignr_epi8(w3, w2, 4);
            _mm_sha256msg2_epu32(_mm_add_epi32(t1, t2), w3)
        }
    }

    /// Intel's SHA extensions, arranged as in their reference code (and the
    /// `sha2` crate's x86 backend).
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    pub unsafe fn compress(state: &mut [u32; 8], blocks: &[u8]) {
        unsafe {
            let byte_swap = _mm_set_epi64x(0x0C0D_0E0F_0809_0A0B, 0x0405_0607_0001_0203);
            let dcba = _mm_loadu_si128(state.as_ptr() as *const __m128i);
            let efgh = _mm_loadu_si128(state.as_ptr().add(4) as *const __m128i);
            let cdab = _mm_shuffle_epi32(dcba, 0xB1);
            let efgh = _mm_shuffle_epi32(efgh, 0x1B);
            let mut abef = _mm_alignr_epi8(cdab, efgh, 8);
            let mut cdgh = _mm_blend_epi16(efgh, cdab, 0xF0);
            for block in blocks.chunks_exact(64) {
                let (abef_before, cdgh_before) = (abef, cdgh);
                let p = block.as_ptr() as *const __m128i;
                let mut w = [
                    _mm_shuffle_epi8(_mm_loadu_si128(p), byte_swap),
                    _mm_shuffle_epi8(_mm_loadu_si128(p.add(1)), byte_swap),
                    _mm_shuffle_epi8(_mm_loadu_si128(p.add(2)), byte_swap),
                    _mm_shuffle_epi8(_mm_loadu_si128(p.add(3)), byte_swap),
                ];
                for (i, word) in w.iter().enumerate() {
                    rounds4(&mut abef, &mut cdgh, *word, i);
                }
                for i in 4..16 {
                    let next = schedule(w[i % 4], w[(i + 1) % 4], w[(i + 2) % 4], w[(i + 3) % 4]);
                    w[i % 4] = next;
                    rounds4(&mut abef, &mut cdgh, next, i);
                }
                abef = _mm_add_epi32(abef, abef_before);
                cdgh = _mm_add_epi32(cdgh, cdgh_before);
            }
            let feba = _mm_shuffle_epi32(abef, 0x1B);
            let dchg = _mm_shuffle_epi32(cdgh, 0xB1);
            let dcba = _mm_blend_epi16(feba, dchg, 0xF0);
            let hgef = _mm_alignr_epi8(dchg, feba, 8);
            _mm_storeu_si128(state.as_mut_ptr() as *mut __m128i, dcba);
            _mm_storeu_si128(state.as_mut_ptr().add(4) as *mut __m128i, hgef);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Sha256;

    fn hex_of(data: &[u8]) -> String {
        let mut h = Sha256::new();
        h.update(data);
        String::from_utf8(h.finish_hex().to_vec()).unwrap()
    }

    #[test]
    fn matches_the_standard_vectors() {
        assert_eq!(
            hex_of(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            hex_of(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            hex_of(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_cpu_instructions_agree_with_the_portable_rounds() {
        if !super::shani::available() {
            eprintln!("this CPU has no SHA extensions: only the portable rounds ran");
            return;
        }
        let data: Vec<u8> = (0..64 * 40u32).map(|i| (i * 131 % 253) as u8).collect();
        for blocks in [1, 2, 7, 40] {
            let bytes = &data[..64 * blocks];
            let mut portable = [1u32, 2, 3, 4, 5, 6, 7, 8];
            let mut instructions = portable;
            for block in bytes.chunks_exact(64) {
                super::compress_portable(&mut portable, block);
            }
            // SAFETY: `available()` said the CPU has the features.
            unsafe { super::shani::compress(&mut instructions, bytes) };
            assert_eq!(portable, instructions, "{blocks} blocks");
        }
    }

    #[test]
    fn fed_in_pieces_equals_fed_at_once() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut pieces = Sha256::new();
        for chunk in data.chunks(37) {
            pieces.update(chunk);
        }
        assert_eq!(pieces.finish_hex().to_vec(), hex_of(&data).into_bytes());
    }
}
