//! One module per LSP method. Each handler turns its message into engine
//! `Input`s and returns; none waits for a sync to finish.

pub mod code_action;
pub mod did_change_configuration;
pub mod did_change_watched_files;
pub mod did_change_workspace_folders;
pub mod did_close;
pub mod did_create_files;
pub mod did_delete_files;
pub mod did_open;
pub mod did_rename_files;
pub mod did_save;
pub mod execute_command;
pub mod initialize;
pub mod initialized;
pub mod shutdown;
