"""The tuning machinery, split the way MetaSchedule splits itself: budget, measurement
(builders, runners, boards), progress, task scheduler, tasks and the tuning loop; and device
(which device measured a log, and which logs a run or a build on a device may use). The
tuning log (database, where it lives) is `parcnet_tvm.tuning_log`; the whole job is
`parcnet_tvm.tune_job`."""
