# `nix flake check`: the gate of `just verify`, written once. The justfile is the source:
# scripts/gate-json.sh turns its `verify` recipe into nix/gate.json (each step and the commands it
# runs, as CI runs them), and every step becomes one check here that runs exactly those commands
# on one shared build of the dependencies. The gate checks that nix/gate.json is current
# (`scripts/gate-json.sh --check`, in nix/hygiene.sh), so the flake and `just verify` cannot
# drift apart. Both build in the dev profile, as `just verify` does.
#
# The house style's separate cargoAudit/cargoDeny pair is not used: `cargo deny check` (the gate's
# own command) covers advisories too, against the pinned advisory-db input, and running the
# justfile's commands verbatim is what keeps the two gates equal.
#
# Beyond the gate, `nix flake check` also runs `doc` (rustdoc warnings are errors) and the Nix
# files' own hygiene (`deadnix`, `alejandra`).
{
  pkgs,
  common,
  advisory-db,
}: let
  inherit (pkgs) lib;
  inherit (common) craneLib commonArgs;

  gate = builtins.fromJSON (builtins.readFile ./gate.json);

  # the gate's cargo commands build in the dev profile: so do their dependencies
  devArgs = commonArgs // {CARGO_PROFILE = "dev";};
  cargoArtifacts = craneLib.buildDepsOnly devArgs;

  # every tool a step of the gate calls; the tests start real servers (nats-server, nginx), the
  # end-to-end ones the stack script (bash, ps, curl, python3 for tokens), a real OpenID provider
  # (node) and, on Linux, headless Chromium over WebDriver
  tools =
    [
      craneLib.clippy
      craneLib.rustfmt
      pkgs.cargo-nextest
      pkgs.cargo-deny
      pkgs.cargo-machete
      pkgs.git
      pkgs.nats-server
      pkgs.nginx
      pkgs.procps
      pkgs.curl
      pkgs.python3
      pkgs.nodejs
    ]
    ++ lib.optionals pkgs.stdenv.isLinux [pkgs.chromium pkgs.chromedriver];

  # `cargo deny --offline` reads the advisory database where cargo-deny keeps it by default (as
  # ../shared/tools/install-advisory-db installs it for CI): the pinned advisory-db input
  advisoryDb = ''
    db=$CARGO_HOME/advisory-dbs/advisory-db-3157b0e258782691
    mkdir -p "$db"
    cp -r ${advisory-db}/. "$db"
    chmod -R u+w "$db"
    git -C "$db" init -q
    git -C "$db" add -A
    git -C "$db" -c user.name=nix -c user.email=nix@localhost commit -q -m advisory-db
  '';

  # node_modules of the e2e OpenID provider (e2e/oidc), from its package-lock.json, linked
  # where e2e/tests/it/oidc.rs looks for them (`npm ci --prefix e2e/oidc` outside Nix)
  oidcNodeModules = pkgs.importNpmLock.buildNodeModules {
    npmRoot = lib.fileset.toSource {
      root = ../e2e/oidc;
      fileset = lib.fileset.unions [../e2e/oidc/package.json ../e2e/oidc/package-lock.json];
    };
    inherit (pkgs) nodejs;
  };
  linkOidc = ''
    ln -sfn ${oidcNodeModules}/node_modules e2e/oidc/node_modules
  '';

  step = s:
    craneLib.mkCargoDerivation (devArgs
      // {
        inherit cargoArtifacts;
        pnameSuffix = "-${s.name}";
        nativeBuildInputs = tools;
        env.CI = "true";
        preBuild = linkOidc + lib.optionalString (lib.any (lib.hasInfix "cargo deny") s.commands) advisoryDb;
        buildPhaseCargoCommand = lib.concatStringsSep "\n" s.commands;
        doInstallCargoArtifacts = false;
      }
      // lib.optionalAttrs pkgs.stdenv.isDarwin {
        __darwinAllowLocalNetworking = true;
      });

  gateChecks = lib.listToAttrs (map (s: lib.nameValuePair s.name (step s)) gate.steps);

  # every .nix file of the repository, for the hygiene checks
  nixFiles = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.fileFilter (file: file.hasExt "nix") ../.;
  };
in
  gateChecks
  // {
    # cargo doc --workspace --all-features --no-deps, rustdoc warnings are errors
    doc = craneLib.cargoDoc (devArgs
      // {
        inherit cargoArtifacts;
        env.RUSTDOCFLAGS = "--deny warnings";
      });

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
  }
