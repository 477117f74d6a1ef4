# `lib.mkServices`: the service binaries of one crate and their OCI images, built with crane the
# way this flake builds its own (the pinned toolchain, one shared build of the dependencies,
# release mode, tests not run here: `nix flake check` runs them once). A team's flake calls it
# with its own crate (README "Your own domain"):
#
#   packages.x86_64-linux = nats-es.lib.mkServices {
#     pkgs = nixpkgs.legacyPackages.x86_64-linux;
#     src = ./.;                        # the Cargo workspace, Cargo.lock at its root
#     crate = "inventory";              # the package that holds the binaries
#     binaries = {                      # each binary and the port its image listens on
#       inventory-aggregate = 8081;
#       inventory-projection = 8082;
#     };
#   };
#
# gives, per binary, `<binary>` (result/bin/<binary>) and on Linux `<binary>-image` (one binary,
# CA certificates, a non-root user, HTTP_ADDR=0.0.0.0:<port>, OCI labels), and `default`, every
# binary of the crate.
{
  crane,
  rust-overlay,
}: {
  pkgs,
  src,
  crate,
  binaries,
  # the Rust toolchain: the platform's pin (its minimum), or the team's own rust-toolchain.toml
  rustToolchainFile ? ../rust-toolchain.toml,
  craneLib ?
    (crane.mkLib pkgs).overrideToolchain (
      p: (rust-overlay.lib.mkRustBin {} p).fromRustupToolchainFile rustToolchainFile
    ),
  # crane arguments every derivation shares (src and version are set from the arguments)
  commonArgs ? {},
  # a build of the dependencies to reuse; by default one is built for the crate
  cargoArtifacts ? null,
  # the images' labels and names
  revision ? "unknown",
  sourceUrl ? null,
  imagePrefix ? "",
}: let
  inherit (pkgs) lib;

  args =
    {
      inherit src;
      pname = crate;
      inherit (craneLib.crateNameFromCargoToml {inherit src;}) version;
      strictDeps = true;
      buildInputs = lib.optionals pkgs.stdenv.isDarwin [pkgs.libiconv];
    }
    // commonArgs;

  deps =
    if cargoArtifacts != null
    then cargoArtifacts
    else craneLib.buildDepsOnly (args // {cargoExtraArgs = "--locked --package ${crate}";});

  binary = name:
    craneLib.buildPackage (args
      // {
        cargoArtifacts = deps;
        pname = name;
        cargoExtraArgs = "--locked --package ${crate} --bin ${name}";
        doCheck = false;
        meta.mainProgram = name;
      });

  built = lib.mapAttrs (name: _: binary name) binaries;

  image = import ./images.nix {inherit pkgs revision sourceUrl;};

  images = lib.optionalAttrs pkgs.stdenv.isLinux (lib.mapAttrs' (name: port:
    lib.nameValuePair "${name}-image" (image {
      name = "${imagePrefix}${name}";
      bin = built.${name};
      inherit port;
    }))
  binaries);
in
  built
  // images
  // {
    default = pkgs.symlinkJoin {
      name = "${crate}-${args.version}";
      paths = lib.attrValues built;
      meta.mainProgram = lib.head (lib.attrNames binaries);
    };
  }
