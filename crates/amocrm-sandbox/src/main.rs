//! The `amocrm-sandbox` binary: a thin wrapper around `amocrm_sandbox::run_cli`.

use std::process::ExitCode;

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("amocrm-sandbox: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(amocrm_sandbox::run_cli()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("amocrm-sandbox: {e:#}");
            ExitCode::FAILURE
        }
    }
}
