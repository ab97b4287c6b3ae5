fn main() {
    std::process::exit(layerfs::cli::compat::main());
}
