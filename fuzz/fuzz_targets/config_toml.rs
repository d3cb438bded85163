//! The TOML configuration file: any text is either a clear error or a desired state the maps
//! can take.
#![no_main]

use ambassador_user::core::{config, reconcile};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match config::parse("fuzz.toml", text) {
        Ok(desired) => {
            reconcile::validate(&desired).expect("a parsed configuration is installable")
        }
        Err(e) => assert!(!e.to_string().is_empty(), "errors say something"),
    }
});
