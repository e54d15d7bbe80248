//! The `amocrm-connector` binary: parses the command line and hands over to [`amocrm_connector::cli`].

fn main() -> std::process::ExitCode {
    amocrm_connector::cli::main()
}
