//! podloop's container agent: see `serve.rs` for what it does and
//! `server/src/transport/agent.rs` for how podloop starts it.
//!
//! Built freestanding (`--cfg podloop_agent_freestanding`, by
//! `server/build.rs`) it needs nothing from the image: no libc, no loader,
//! one static x86_64 executable of a few kilobytes. Built by cargo it is an
//! ordinary program, so its logic is unit-tested and linted like the rest.

#![cfg_attr(podloop_agent_freestanding, no_std)]
#![cfg_attr(podloop_agent_freestanding, no_main)]
// The freestanding build supplies `memcpy` and friends itself; no loop in
// this crate may be turned into a call to them (it would call itself).
#![no_builtins]

#[cfg(target_arch = "x86_64")]
mod serve;
mod sha256;
#[cfg(target_arch = "x86_64")]
mod sys;

#[cfg(podloop_agent_freestanding)]
mod freestanding {
    use crate::{serve, sys};

    // The kernel starts a static executable at `_start` with the stack
    // holding argc, argv[], NULL, envp[], NULL.
    core::arch::global_asm!(
        ".globl _start",
        "_start:",
        "mov rdi, rsp",
        "and rsp, -16",
        "call agent_start",
        "ud2",
    );

    #[no_mangle]
    unsafe extern "C" fn agent_start(stack: *const usize) -> ! {
        // SAFETY: the layout above, as the kernel's ABI defines it.
        unsafe {
            let argc = *stack;
            let argv = stack.add(1) as *const *const u8;
            let envp = argv.add(argc + 1);
            sys::exit(serve::main(argc, argv, envp))
        }
    }

    #[panic_handler]
    fn panic(_: &core::panic::PanicInfo) -> ! {
        let _ = sys::write_all(2, b"podloop agent: internal error\n");
        sys::exit(70)
    }

    // The prebuilt `core` refers to the unwinder's personality routine; with
    // panic=abort nothing unwinds, so it is never called.
    #[no_mangle]
    extern "C" fn rust_eh_personality() {}

    // What the compiler may call for copies and fills: the string
    // instructions, which modern x86_64 runs a cache line at a time (a byte
    // loop here cost 40 µs a save: every path buffer is zeroed).
    #[no_mangle]
    unsafe extern "C" fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
        // SAFETY: the compiler's contract for memcpy: no overlap.
        unsafe {
            core::arch::asm!(
                "rep movsb",
                inout("rcx") n => _,
                inout("rdi") dest => _,
                inout("rsi") src => _,
                options(nostack, preserves_flags)
            );
        }
        dest
    }

    #[no_mangle]
    unsafe extern "C" fn memmove(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
        // SAFETY: the compiler's contract for memmove.
        unsafe {
            if (dest as usize) <= (src as usize) || (dest as usize) >= (src as usize) + n {
                // Forward copying is safe unless dest overlaps src's tail.
                return memcpy(dest, src, n);
            }
            let mut i = n;
            while i > 0 {
                i -= 1;
                *dest.add(i) = *src.add(i);
            }
        }
        dest
    }

    #[no_mangle]
    unsafe extern "C" fn memset(dest: *mut u8, byte: i32, n: usize) -> *mut u8 {
        // SAFETY: the compiler's contract for memset.
        unsafe {
            core::arch::asm!(
                "rep stosb",
                inout("rcx") n => _,
                inout("rdi") dest => _,
                in("al") byte as u8,
                options(nostack, preserves_flags)
            );
        }
        dest
    }

    #[no_mangle]
    unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
        // SAFETY: the compiler's contract for memcmp.
        unsafe {
            let mut i = 0;
            while i < n {
                let (x, y) = (*a.add(i), *b.add(i));
                if x != y {
                    return x as i32 - y as i32;
                }
                i += 1;
            }
        }
        0
    }

    #[no_mangle]
    unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
        // SAFETY: as memcmp.
        unsafe { memcmp(a, b, n) }
    }
}

#[cfg(all(not(podloop_agent_freestanding), target_arch = "x86_64"))]
fn main() {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStringExt;
    let args: Vec<CString> = std::env::args_os()
        .map(|a| CString::new(a.into_vec()).expect("arguments hold no NUL"))
        .collect();
    let env: Vec<CString> = std::env::vars_os()
        .map(|(k, v)| {
            let mut pair = k.into_vec();
            pair.push(b'=');
            pair.extend(v.into_vec());
            CString::new(pair).expect("the environment holds no NUL")
        })
        .collect();
    let mut argv: Vec<*const u8> = args.iter().map(|a| a.as_ptr().cast()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const u8> = env.iter().map(|e| e.as_ptr().cast()).collect();
    envp.push(std::ptr::null());
    // SAFETY: both arrays are NULL-terminated and outlive the call.
    let code = unsafe { serve::main(args.len(), argv.as_ptr(), envp.as_ptr()) };
    std::process::exit(code)
}

#[cfg(all(not(podloop_agent_freestanding), not(target_arch = "x86_64")))]
fn main() {
    eprintln!("the podloop agent runs on x86_64 only");
    std::process::exit(2)
}
