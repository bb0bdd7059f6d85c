fn main() -> std::process::ExitCode {
    stoker_flight::cli::main()
}
