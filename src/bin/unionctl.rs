fn main() {
    std::process::exit(layerfs::cli::unionctl_main());
}
