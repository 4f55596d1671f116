//! The API's JSON bodies as the server reads them (`api::extract::parse_json`): any bytes give a
//! request or a validation error naming a field, never a panic; what it accepts a plain parse
//! accepts too (it is only stricter: one object, no key twice, no array in an array).
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use warmpool::api::extract::parse_json;
use warmpool::error::AppError;
use warmpool_types::api;

fn read<T: DeserializeOwned>(data: &[u8]) {
    match parse_json::<T>(data) {
        Ok(_) => assert!(serde_json::from_slice::<T>(data).is_ok()),
        // A field may be named "" (JSON allows the empty key), so only its presence is asserted.
        Err(AppError::Validation(problems)) => assert!(!problems.is_empty()),
        Err(e) => panic!("not a validation error: {e:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    read::<api::UpdateWarmPoolBody>(data);
    read::<api::TestWarmPoolBootBody>(data);
    read::<api::ClearWarmPoolBody>(data);
    read::<api::CreateProjectBody>(data);
    read::<api::UpdateProjectBody>(data);
    read::<api::PutEnvVarsBody>(data);
    read::<api::UpdateDevboxBody>(data);
    read::<api::UpdateResourcesBody>(data);
    read::<api::ExecBody>(data);
    read::<api::ClaimBody>(data);
    read::<api::CreateTokenBody>(data);
});
