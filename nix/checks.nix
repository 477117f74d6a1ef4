# `nix flake check`: the gate of `just verify` (see gate.txt), plus the Nix files' own hygiene.
{
  pkgs,
  common,
  advisory-db,
}: let
  inherit (pkgs) lib;
  inherit (common) craneLib src pname version commonArgs cargoArtifacts;

  withArtifacts = commonArgs // {inherit cargoArtifacts;};

  # every .nix file of the repository, for the hygiene checks
  nixFiles = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.fileFilter (file: file.hasExt "nix") ../.;
  };

  checks = {
    # cargo fmt --all --check
    fmt = craneLib.cargoFmt {
      inherit src pname version;
      cargoExtraArgs = "--all";
    };

    # cargo clippy --workspace --all-targets --all-features -- -D warnings
    clippy = craneLib.cargoClippy (withArtifacts
      // {
        cargoClippyExtraArgs = "--all-targets -- --deny warnings";
      });

    # cargo nextest run --workspace --all-features --profile ci --no-tests=fail
    # The integration tests start a real nats-server (and nginx) on the loopback interface.
    nextest = craneLib.cargoNextest (withArtifacts
      // {
        cargoNextestExtraArgs = "--profile ci --no-tests=fail";
        # the tests start real servers and, end to end, the stack script (bash, ps, curl,
        # python3 for tokens) with nginx in front
        # (and, for the browser tests, headless Chromium over WebDriver: Linux only in nixpkgs)
        nativeBuildInputs =
          [pkgs.nats-server pkgs.nginx pkgs.procps pkgs.curl pkgs.python3]
          ++ lib.optionals pkgs.stdenv.isLinux [pkgs.chromium pkgs.chromedriver];
      }
      // lib.optionalAttrs pkgs.stdenv.isDarwin {
        __darwinAllowLocalNetworking = true;
      });

    # cargo test --workspace --all-features --doc
    doctest = craneLib.cargoDocTest withArtifacts;

    # cargo doc --workspace --all-features --no-deps, rustdoc warnings are errors
    doc = craneLib.cargoDoc (withArtifacts
      // {
        env.RUSTDOCFLAGS = "--deny warnings";
      });

    # cargo deny check bans licenses sources (advisories need the network: see `audit`)
    deny = craneLib.cargoDeny {
      inherit src pname version;
      cargoDenyChecks = "bans licenses sources";
    };

    # the advisories part of `cargo deny check`, against the pinned advisory-db input
    audit = craneLib.cargoAudit {
      inherit src pname version advisory-db;
    };

    # scripts/check-unused-deps.sh: cargo machete, and no unused [workspace.dependencies] entry
    unused-deps = pkgs.runCommand "nats-es-unused-deps" {nativeBuildInputs = [pkgs.cargo-machete];} ''
      cd ${src}
      bash scripts/check-unused-deps.sh
      touch $out
    '';

    # the Nix files themselves: no dead code, formatted
    deadnix = pkgs.runCommand "nats-es-deadnix" {nativeBuildInputs = [pkgs.deadnix];} ''
      cd ${nixFiles}
      deadnix --fail .
      touch $out
    '';
    alejandra = pkgs.runCommand "nats-es-alejandra" {nativeBuildInputs = [pkgs.alejandra];} ''
      cd ${nixFiles}
      alejandra --check .
      touch $out
    '';
  };

  # gate.txt: `key = check check ...` lines; `#` starts a comment.
  gateLines = lib.filter (line: line != "") (map (
    line: lib.trim (lib.head (lib.splitString "#" line))
  ) (lib.splitString "\n" (builtins.readFile ./gate.txt)));
  gateEntry = line: let
    parts = lib.splitString "=" line;
  in
    if lib.length parts != 2
    then throw "nix/gate.txt: expected `step = check ...`, got: ${line}"
    else lib.filter (word: word != "") (lib.splitString " " (lib.elemAt parts 1));
  gateNames = lib.concatMap gateEntry gateLines;

  expected = lib.sort lib.lessThan gateNames;
  actual = lib.attrNames checks;
  missing = lib.subtractLists actual expected;
  extra = lib.subtractLists expected actual;
  show = names:
    if names == []
    then "(none)"
    else toString names;
in
  if lib.unique expected != expected
  then throw "nix/gate.txt names a check more than once: ${toString expected}"
  else if actual != expected
  then
    throw ''
      nix/checks.nix and nix/gate.txt disagree about the gate.
        in gate.txt but not a check: ${show missing}
        a check but not in gate.txt: ${show extra}''
  else checks
