module jobretry.local/kstatus-read

go 1.24.0

require sigs.k8s.io/cli-utils v0.37.2
