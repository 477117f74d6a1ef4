{
  description = "nats-es: event sourcing on NATS JetStream (aggregate and projection services)";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixpkgs-unstable";

    crane.url = "github:ipetkov/crane";

    rust-overlay = {
      url = "github:oxalica/rust-overlay";
      inputs.nixpkgs.follows = "nixpkgs";
    };

    advisory-db = {
      url = "github:rustsec/advisory-db";
      flake = false;
    };
  };

  # Wiring only: what each output contains lives in nix/, one concern per file.
  outputs = {
    self,
    nixpkgs,
    crane,
    rust-overlay,
    advisory-db,
  }: let
    # lib.mkServices: a crate's service binaries and images, built as ours are (nix/services.nix)
    mkServices = import ./nix/services.nix {inherit crane rust-overlay;};

    systems = [
      "x86_64-linux"
      "aarch64-linux"
      "x86_64-darwin"
      "aarch64-darwin"
    ];

    perSystem = system: let
      pkgs = import nixpkgs {
        inherit system;
        overlays = [rust-overlay.overlays.default];
      };
      common = import ./nix/common.nix {inherit pkgs crane;};
      binaries = import ./nix/packages.nix {inherit self pkgs common mkServices;};
    in {
      packages = binaries;
      checks = import ./nix/checks.nix {inherit pkgs common advisory-db;};
      devShells.default = import ./nix/devshell.nix {
        inherit pkgs common;
        checks = self.checks.${system};
      };
      apps = import ./nix/apps.nix {inherit pkgs binaries;};
      formatter = pkgs.alejandra;
    };

    outputsFor = nixpkgs.lib.genAttrs systems perSystem;
  in
    nixpkgs.lib.genAttrs ["packages" "checks" "devShells" "apps" "formatter"] (
      output: nixpkgs.lib.mapAttrs (_: outputs: outputs.${output}) outputsFor
    )
    // {
      lib = {inherit mkServices;};
    };
}
