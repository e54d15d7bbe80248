//! The `amocrm-sandbox` binary: a local stand-in for amoCRM (see the amocrm-sandbox crate).

fn main() -> std::process::ExitCode {
    eprintln!("error: the sandbox binary is being built; use the library for now");
    std::process::ExitCode::FAILURE
}
