"""`video2mp3`, the command line client: a gRPC client of the mesh (through
Envoy) built on the generated stubs, with click for arguments and rich for
progress bars. Installed with the package ([project.scripts])."""
