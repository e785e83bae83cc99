//! Typed conversions between the opaque handles of the ABI and the Rust values behind
//! them, in the manner of rustls-ffi's `Castable`: each handle type names the Rust type
//! it stands for and how it is owned (a reference-counted `Arc`, or a `Box` with one
//! owner), and these helpers are the only places that cast — no raw `as` elsewhere.

use std::sync::Arc;

/// A handle type and the Rust type behind it.
pub(crate) trait Castable {
    type RustType;
}

/// Handles that are `Arc`s: shared, immutable, released with the last reference.
pub(crate) trait ArcCastable: Castable {}

/// Handles that are `Box`es: one owner, who may change the value, then frees or
/// consumes it.
pub(crate) trait BoxCastable: Castable {}

pub(crate) fn arc_into_ptr<C: ArcCastable>(value: C::RustType) -> *const C {
    Arc::into_raw(Arc::new(value)).cast()
}

/// Borrows the value behind a handle for the call; `None` for NULL.
pub(crate) unsafe fn arc_ref<'a, C: ArcCastable>(p: *const C) -> Option<&'a C::RustType> {
    p.cast::<C::RustType>().as_ref()
}

/// Another reference to the same value; NULL for NULL.
pub(crate) unsafe fn arc_clone<C: ArcCastable>(p: *const C) -> *const C {
    if !p.is_null() {
        Arc::increment_strong_count(p.cast::<C::RustType>());
    }
    p
}

/// Releases one reference; NULL is ignored.
pub(crate) unsafe fn arc_free<C: ArcCastable>(p: *const C) {
    if !p.is_null() {
        drop(Arc::from_raw(p.cast::<C::RustType>()));
    }
}

pub(crate) fn box_into_ptr<C: BoxCastable>(value: C::RustType) -> *mut C {
    Box::into_raw(Box::new(value)).cast()
}

pub(crate) unsafe fn box_ref<'a, C: BoxCastable>(p: *const C) -> Option<&'a C::RustType> {
    p.cast::<C::RustType>().as_ref()
}

pub(crate) unsafe fn box_mut<'a, C: BoxCastable>(p: *mut C) -> Option<&'a mut C::RustType> {
    p.cast::<C::RustType>().as_mut()
}

/// Takes the value back from its owner (the handle is gone afterwards).
pub(crate) unsafe fn box_take<C: BoxCastable>(p: *mut C) -> Option<Box<C::RustType>> {
    (!p.is_null()).then(|| Box::from_raw(p.cast::<C::RustType>()))
}

/// Frees the value; NULL is ignored.
pub(crate) unsafe fn box_free<C: BoxCastable>(p: *mut C) {
    drop(box_take(p));
}
