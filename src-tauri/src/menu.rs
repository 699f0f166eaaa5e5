//! The native menu bar, the tray (menu-bar) icon, and what their items do. Both show the
//! engine's state and offer Start/Stop; the tray keeps the app reachable with no window open.

use tauri::menu::{
    AboutMetadataBuilder, Menu, MenuBuilder, MenuEvent, MenuItem, MenuItemBuilder,
    PredefinedMenuItem, SubmenuBuilder,
};
use tauri::tray::TrayIconBuilder;
use tauri::{AppHandle, Manager, Wry};

use crate::engine::{EngineStatus, State};

/// The items whose text or availability follows the engine.
pub struct EngineItems {
    status: Vec<MenuItem<Wry>>,
    start: Vec<MenuItem<Wry>>,
    stop: Vec<MenuItem<Wry>>,
}

const TRAY_ID: &str = "berth";

fn engine_items(app: &AppHandle) -> tauri::Result<(MenuItem<Wry>, MenuItem<Wry>, MenuItem<Wry>)> {
    let status = MenuItemBuilder::with_id("engine-status", "Engine: checking…")
        .enabled(false)
        .build(app)?;
    let start = MenuItemBuilder::with_id("engine-start", "Start Engine")
        .enabled(false)
        .build(app)?;
    let stop = MenuItemBuilder::with_id("engine-stop", "Stop Engine")
        .enabled(false)
        .build(app)?;
    Ok((status, start, stop))
}

/// The window's menu bar (the app menu on macOS) and the tray icon.
pub fn install(app: &AppHandle) -> tauri::Result<()> {
    let (m_status, m_start, m_stop) = engine_items(app)?;
    let (t_status, t_start, t_stop) = engine_items(app)?;

    let prefs = MenuItemBuilder::with_id("preferences", "Preferences…")
        .accelerator("CmdOrCtrl+,")
        .build(app)?;
    let quit = MenuItemBuilder::with_id("quit", "Quit Berth")
        .accelerator("CmdOrCtrl+Q")
        .build(app)?;
    let close = MenuItemBuilder::with_id("close-window", "Close Window")
        .accelerator("CmdOrCtrl+W")
        .build(app)?;
    let about = PredefinedMenuItem::about(
        app,
        Some("About Berth"),
        Some(
            AboutMetadataBuilder::new()
                .name(Some("Berth"))
                .version(Some(env!("CARGO_PKG_VERSION")))
                .comments(Some("Containers on your desktop"))
                .build(),
        ),
    )?;

    let mut bar = MenuBuilder::new(app);
    if cfg!(target_os = "macos") {
        let app_menu = SubmenuBuilder::new(app, "Berth")
            .item(&about)
            .separator()
            .item(&prefs)
            .separator()
            .services()
            .separator()
            .hide()
            .hide_others()
            .show_all()
            .separator()
            .item(&quit)
            .build()?;
        bar = bar.item(&app_menu);
        let file = SubmenuBuilder::new(app, "File").item(&close).build()?;
        bar = bar.item(&file);
    } else {
        let file = SubmenuBuilder::new(app, "File")
            .item(&prefs)
            .separator()
            .item(&close)
            .item(&quit)
            .build()?;
        bar = bar.item(&file);
    }
    let edit = SubmenuBuilder::new(app, "Edit")
        .undo()
        .redo()
        .separator()
        .cut()
        .copy()
        .paste()
        .select_all()
        .build()?;
    let view = SubmenuBuilder::new(app, "View")
        .item(
            &MenuItemBuilder::with_id("go-containers", "Containers")
                .accelerator("CmdOrCtrl+1")
                .build(app)?,
        )
        .item(
            &MenuItemBuilder::with_id("go-images", "Images")
                .accelerator("CmdOrCtrl+2")
                .build(app)?,
        )
        .separator()
        .item(
            &MenuItemBuilder::with_id("reload", "Reload")
                .accelerator("CmdOrCtrl+R")
                .build(app)?,
        )
        .item(
            &MenuItemBuilder::with_id("fullscreen", "Toggle Full Screen")
                .accelerator("F11")
                .build(app)?,
        )
        .build()?;
    let engine = SubmenuBuilder::new(app, "Engine")
        .item(&m_status)
        .separator()
        .item(&m_start)
        .item(&m_stop)
        .build()?;
    let window = SubmenuBuilder::new(app, "Window").minimize().build()?;
    let mut help = SubmenuBuilder::new(app, "Help");
    if !cfg!(target_os = "macos") {
        help = help.item(&about);
    }
    let help = help.build()?;
    let bar = bar
        .item(&edit)
        .item(&view)
        .item(&engine)
        .item(&window)
        .item(&help)
        .build()?;
    app.set_menu(bar)?;

    let tray_menu: Menu<Wry> = MenuBuilder::new(app)
        .item(&t_status)
        .separator()
        .item(&MenuItemBuilder::with_id("open", "Open Dashboard").build(app)?)
        .item(&t_start)
        .item(&t_stop)
        .separator()
        .item(&MenuItemBuilder::with_id("quit", "Quit Berth").build(app)?)
        .build()?;
    let mut tray = TrayIconBuilder::with_id(TRAY_ID)
        .tooltip("Berth")
        .menu(&tray_menu)
        .show_menu_on_left_click(true);
    if let Some(icon) = app.default_window_icon() {
        tray = tray.icon(icon.clone());
    }
    // A tray needs a status-notifier host (a desktop panel); without one the app runs on.
    if let Err(e) = tray.build(app) {
        eprintln!("berth: no tray icon: {e}");
    }

    app.manage(EngineItems {
        status: vec![m_status, t_status],
        start: vec![m_start, t_start],
        stop: vec![m_stop, t_stop],
    });
    app.on_menu_event(on_menu);
    Ok(())
}

/// The menus and the tray's tooltip follow the engine.
pub fn show_state(app: &AppHandle, st: &EngineStatus) {
    let Some(items) = app.try_state::<EngineItems>() else {
        return;
    };
    let text = format!("Engine: {}", st.state.label());
    let can_start = matches!(st.state, State::Stopped | State::Failed);
    let can_stop = matches!(st.state, State::Running | State::Failed);
    for i in &items.status {
        let _ = i.set_text(&text);
    }
    for i in &items.start {
        let _ = i.set_enabled(can_start);
    }
    for i in &items.stop {
        let _ = i.set_enabled(can_stop);
    }
    if let Some(tray) = app.tray_by_id(TRAY_ID) {
        let _ = tray.set_tooltip(Some(format!("Berth — {}", st.message)));
    }
}

fn on_menu(app: &AppHandle, event: MenuEvent) {
    match event.id().as_ref() {
        "open" => crate::show_dashboard(app),
        "preferences" => crate::navigate(app, "/preferences/registries"),
        "go-containers" => crate::navigate(app, "/containers"),
        "go-images" => crate::navigate(app, "/images"),
        "reload" => {
            if let Some(w) = app.get_webview_window(crate::MAIN) {
                let _ = w.eval("location.reload()");
            }
        }
        "fullscreen" => {
            if let Some(w) = app.get_webview_window(crate::MAIN) {
                let full = w.is_fullscreen().unwrap_or(false);
                let _ = w.set_fullscreen(!full);
            }
        }
        "close-window" => {
            if let Some(w) = app.get_webview_window(crate::MAIN) {
                let _ = w.hide();
            }
        }
        "engine-start" => crate::start_engine(app),
        "engine-stop" => crate::stop_engine(app),
        "quit" => crate::quit(app),
        _ => {}
    }
}
