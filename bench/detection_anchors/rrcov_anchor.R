# Anchors for bench/detection.py: ROBPCA (rrcov::PcaHubert) and PcaGrid (rrcov::PcaGrid), and the
# classic robust-statistics data sets that R's packages ship.
#
#   Rscript rrcov_anchor.R fit MANIFEST OUTDIR
#       MANIFEST: tab-separated lines "id<TAB>path to a headerless CSV matrix<TAB>k" (k = 0: ROBPCA
#       chooses it, as below, and both methods use its choice). For each line and
#       each method, writes OUTDIR/<id>_<method>.csv (columns sd, od, flag; one row per sample; flag 1 =
#       regular, rrcov's convention) and OUTDIR/<id>_<method>_loadings.csv (p x k), and appends a line
#       "id method k cutoff_sd cutoff_od time_s error" to OUTDIR/summary.tsv.
#   Rscript rrcov_anchor.R export OUTDIR
#       Writes OUTDIR/<name>.csv (headerless) for the classic data sets bench/detection.py uses.
#
# Both methods run with their defaults (PcaHubert: alpha = 0.75, mcd = TRUE; PcaGrid: method "mad"),
# the given k and no scaling; BLAS threads are whatever the caller's environment sets.
suppressMessages({
  library(rrcov)
  library(robustbase)
})

args <- commandArgs(trailingOnly = TRUE)
mode <- args[1]

write_matrix <- function(m, path) {
  write.table(m, path, sep = ",", row.names = FALSE, col.names = FALSE)
}

if (mode == "export") {
  out <- args[2]
  dir.create(out, showWarnings = FALSE, recursive = TRUE)
  data(hbk, package = "robustbase")
  data(bushfire, package = "robustbase")
  data(wood, package = "robustbase")
  data(starsCYG, package = "robustbase")
  data(octane, package = "rrcov")
  write_matrix(data.matrix(hbk[, 1:3]), file.path(out, "hbk.csv"))       # the x part
  write_matrix(data.matrix(bushfire), file.path(out, "bushfire.csv"))
  write_matrix(data.matrix(wood[, 1:5]), file.path(out, "wood.csv"))     # the x part
  write_matrix(data.matrix(starsCYG), file.path(out, "starsCYG.csv"))
  write_matrix(data.matrix(octane[, -1]), file.path(out, "octane.csv"))  # spectra without y
  cat(sprintf("rrcov %s, robustbase %s\n", packageVersion("rrcov"), packageVersion("robustbase")),
      file = file.path(out, "versions.txt"))
  quit(status = 0)
}

if (mode != "fit") stop("usage: rrcov_anchor.R fit MANIFEST OUTDIR | export OUTDIR")
manifest <- read.table(args[2], sep = "\t", header = FALSE, colClasses = c("character", "character",
                                                                           "integer"))
out <- args[3]
dir.create(out, showWarnings = FALSE, recursive = TRUE)
summary_path <- file.path(out, "summary.tsv")
cat("id\tmethod\tk\tcutoff_sd\tcutoff_od\ttime_s\terror\n", file = summary_path)

methods <- list(
  ROBPCA = function(x, k) PcaHubert(x, k = k, kmax = max(10, k)),
  PcaGrid = function(x, k) PcaGrid(x, k = k)
)

# One fit of each method first, untimed: the first call of a session loads code lazily.
warm <- matrix(rnorm(200), 50, 4)
for (m in methods) invisible(m(warm, 2))

for (i in seq_len(nrow(manifest))) {
  id <- manifest[i, 1]
  x <- as.matrix(read.csv(manifest[i, 2], header = FALSE))
  k <- manifest[i, 3]
  # k = 0: ROBPCA's own choice (rrcov: the smallest k whose robust eigenvalues explain >= 80% of the
  # robust total variance, among those with lambda_k / lambda_1 >= 1e-3), then both methods use it.
  if (k == 0) k <- min(PcaHubert(x, k = 0)@k, ncol(x) - 1)  # keep an orthogonal complement
  for (name in names(methods)) {
    # Small fits take a few ms, near the clock's resolution: repeat until 50 ms have passed (at most
    # 20 fits) and report the mean time per fit.
    reps <- 0
    t0 <- proc.time()[["elapsed"]]
    repeat {
      fit <- tryCatch(methods[[name]](x, k), error = function(e) e)
      reps <- reps + 1
      elapsed <- proc.time()[["elapsed"]] - t0
      if (inherits(fit, "error") || elapsed >= 0.05 || reps >= 20) break
    }
    elapsed <- elapsed / reps
    if (inherits(fit, "error")) {
      msg <- gsub("[\t\n]", " ", conditionMessage(fit))
      cat(sprintf("%s\t%s\tNA\tNA\tNA\t%.6f\t%s\n", id, name, elapsed, msg), file = summary_path,
          append = TRUE)
      next
    }
    res <- data.frame(sd = fit@sd, od = fit@od, flag = as.integer(fit@flag))
    write.csv(res, file.path(out, sprintf("%s_%s.csv", id, name)), row.names = FALSE)
    write_matrix(fit@loadings, file.path(out, sprintf("%s_%s_loadings.csv", id, name)))
    cat(sprintf("%s\t%s\t%d\t%.17g\t%.17g\t%.6f\t\n", id, name, fit@k, fit@cutoff.sd, fit@cutoff.od,
                elapsed), file = summary_path, append = TRUE)
  }
}
