# The two service binaries, built in release mode on top of the shared dependency artifacts.
# Tests do not run here: `nix flake check` runs them once, for the whole workspace.
{
  pkgs,
  common,
}: let
  inherit (common) craneLib commonArgs cargoArtifacts;

  service = name:
    craneLib.buildPackage (commonArgs
      // {
        inherit cargoArtifacts;
        pname = name;
        cargoExtraArgs = "--locked --package ${name} --bin ${name}";
        doCheck = false;
        meta.mainProgram = name;
      });

  aggregate = service "aggregate";
  projection = service "projection";
in {
  inherit aggregate projection;

  default = pkgs.symlinkJoin {
    name = "nats-es-${common.version}";
    paths = [aggregate projection];
    meta.mainProgram = "aggregate";
  };
}
