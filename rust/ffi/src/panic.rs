//! The panic boundary around every export: a panic never unwinds into the caller.
//! What the caller gets instead depends on the return type (`PanicOrDefault`): a
//! result is `ZTP_PANIC`, a pointer NULL, a number 0, nothing is nothing.

use crate::ztp_result;

pub(crate) trait PanicOrDefault {
    fn value() -> Self;
}

impl PanicOrDefault for ztp_result {
    fn value() -> Self {
        ztp_result::ZTP_PANIC
    }
}

impl<T> PanicOrDefault for *const T {
    fn value() -> Self {
        std::ptr::null()
    }
}

impl<T> PanicOrDefault for *mut T {
    fn value() -> Self {
        std::ptr::null_mut()
    }
}

impl PanicOrDefault for u32 {
    fn value() -> Self {
        0
    }
}

impl PanicOrDefault for () {
    fn value() -> Self {}
}

/// Runs the body of an export; a panic becomes the return type's `PanicOrDefault`.
macro_rules! ffi_panic_boundary {
    ($($body:tt)*) => {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| { $($body)* })) {
            Ok(value) => value,
            Err(_) => $crate::panic::PanicOrDefault::value(),
        }
    };
}

pub(crate) use ffi_panic_boundary;
