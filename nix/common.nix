# What every crane derivation shares: the pinned toolchain, the source, the common arguments and
# the one dependency build all checks and packages reuse.
{
  pkgs,
  crane,
}: let
  inherit (pkgs) lib;

  # rust-toolchain.toml is the single pin (1.95.0 with rustfmt and clippy) for rustup users and
  # for the flake alike.
  craneLib = (crane.mkLib pkgs).overrideToolchain (
    p: p.rust-bin.fromRustupToolchainFile ../rust-toolchain.toml
  );

  root = ../.;

  # Cargo sources (.rs, every .toml, Cargo.lock) plus the non-Rust files tests and tools read.
  # crane's cleanCargoSource would drop the JSON fixtures. Paths that do not exist yet are
  # wrapped in maybeMissing so evaluation does not depend on them.
  src = lib.fileset.toSource {
    inherit root;
    fileset =
      lib.fileset.difference (lib.fileset.unions [
        (craneLib.fileset.commonCargoSources root)
        (lib.fileset.fileFilter (file: file.hasExt "json") ../shared/tests/fixtures)
        # the example's golden event, and the README whose snippets its test checks
        (lib.fileset.fileFilter (file: file.hasExt "json") ../examples/inventory/tests/fixtures)
        ../README.md
        ../.config/nextest.toml
        ../deny.toml
        # the end-to-end tests start the stack through these
        ../scripts
        ../gateway
        ../justfile
        ../justfile.stack
        # key fixtures of the auth tests; the OpenID provider of the e2e auth test (its
        # node_modules come from nix/checks.nix, built from the lock file)
        ../platform/tests/fixtures
        ../e2e/oidc/provider.mjs
        ../e2e/oidc/package.json
        ../e2e/oidc/package-lock.json
      ]) (lib.fileset.unions [
        # never part of a git checkout, but present when the flake is used as a plain path
        (lib.fileset.maybeMissing ../target)
        (lib.fileset.maybeMissing ../.data)
      ]);
  };

  # The workspace root is virtual: name the derivations explicitly, take the version from
  # [workspace.package].
  pname = "nats-es";
  inherit (craneLib.crateNameFromCargoToml {inherit src;}) version;

  commonArgs = {
    inherit src pname version;
    strictDeps = true;
    # the gate's cargo flags: every member, every feature
    cargoExtraArgs = "--locked --workspace --all-features";
    buildInputs = lib.optionals pkgs.stdenv.isDarwin [pkgs.libiconv];
  };
in {
  inherit craneLib src pname version commonArgs;

  # Dependencies of the whole workspace (all targets, all features), built once and shared by
  # clippy, nextest, doctests, docs and both binaries.
  cargoArtifacts = craneLib.buildDepsOnly commonArgs;
}
