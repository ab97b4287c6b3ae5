fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(code) = layerfs::mount::indexing::internal_build(&args) {
        std::process::exit(code);
    }
    std::process::exit(layerfs::cli::unionctl_main());
}
